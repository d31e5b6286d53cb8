//! The shortest end-to-end proof: limpet starts on port 0 and proxies to a real backend.

mod support;

use std::time::Duration;

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

/// The in-process entry the tests use: a reload command swaps the config, a stop closes every socket limpet held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_limpet_reloads_when_told_and_closes_when_stopped() {
    let b1 = HttpBackend::start("b1").await;
    let b2 = HttpBackend::start("b2").await;
    let limpet = InProcess::start(&simple_config("round_robin", &[b1.addr], "", ""));
    let (addr, admin) = (limpet.addr(), limpet.admin.expect("config has [admin]"));
    assert_eq!(get(addr, "/").await.text(), "b1");
    let text = std::fs::read_to_string(&limpet.config_path).expect("read config");
    let text = text.replace(&b1.addr.to_string(), &b2.addr.to_string());
    std::fs::write(&limpet.config_path, text).expect("write config");
    limpet.reload().await;
    eventually(
        Duration::from_secs(10),
        "the reloaded config serves",
        || async { (get(addr, "/").await.text() == "b2").then_some(()) },
    )
    .await;
    tokio::task::block_in_place(|| limpet.stop()).expect("a clean stop");
    for a in [addr, admin] {
        let refused = tokio::net::TcpStream::connect(a).await.is_err();
        assert!(refused, "{a} still accepts after stop");
    }
}
