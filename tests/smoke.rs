//! The shortest end-to-end proof: limpet starts on port 0 and proxies to a real backend.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_a_request_to_a_backend() {
    let backend = HttpBackend::start("b1").await;
    let limpet = InProcess::start(&simple_config("round_robin", &[backend.addr], "", ""));
    let resp = get(limpet.addr(), "/hello?x=1").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "b1");
    let seen = backend.last().expect("backend saw the request");
    assert_eq!(seen.uri, "/hello?x=1");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
}
