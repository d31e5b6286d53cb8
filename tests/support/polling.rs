//! Engine.IO v4 polling through limpet, one request per new connection, and Socket.IO over a WebSocket: enough
//! to open a session, connect its namespace and ask which node holds it (`whoami`).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::{get, request, Resp, Ws};

const WAIT: Duration = Duration::from_secs(15);

/// The sid of an Engine.IO v4 open packet.
pub fn sid_of(open: &str) -> String {
    let v: Value = serde_json::from_str(open.trim_start_matches('0')).unwrap();
    v["sid"].as_str().unwrap().to_string()
}

/// Opens an Engine.IO v4 polling session through limpet.
pub async fn handshake(addr: SocketAddr) -> String {
    let r = get(addr, "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(r.status, 200, "{}", r.text());
    sid_of(&r.text())
}

/// POSTs `payload` to the session.
pub async fn post(addr: SocketAddr, sid: &str, payload: &str) -> Resp {
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let ct = [("content-type", "text/plain;charset=UTF-8")];
    request(addr, "POST", &path, &ct, payload.to_string())
        .await
        .unwrap()
}

/// One poll of the session, which must answer 200: its packets.
pub async fn poll(addr: SocketAddr, sid: &str) -> String {
    let r = get(
        addr,
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// The node of a session, asked through limpet: Socket.IO connect (when `ack` is 1), then the `whoami` event
/// with ack id `ack`.
pub async fn whoami(addr: SocketAddr, sid: &str, ack: u32) -> String {
    if ack == 1 {
        assert_eq!(post(addr, sid, "40").await.status, 200);
        assert!(poll(addr, sid).await.starts_with("40"));
    }
    assert_eq!(
        post(addr, sid, &format!("42{ack}[\"whoami\"]"))
            .await
            .status,
        200
    );
    let answer = poll(addr, sid).await;
    let packet = answer
        .split('\x1e')
        .find_map(|p| p.strip_prefix(&format!("43{ack}")))
        .unwrap_or_else(|| panic!("no whoami answer in {answer:?}"));
    let v: Value = serde_json::from_str(packet).unwrap();
    v[0]["node"].as_str().unwrap().to_string()
}

/// Reads WebSocket text messages until one starts with `prefix` (answering server pings).
pub async fn ws_read(ws: &mut Ws, prefix: &str) -> String {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("websocket read timed out")
            .expect("websocket closed")
            .unwrap();
        if let Message::Text(t) = msg {
            if t == "2" {
                ws.send(Message::Text("3".into())).await.unwrap();
            } else if t.starts_with(prefix) {
                return t.to_string();
            }
        }
    }
}
