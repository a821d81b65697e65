//! WebSocket (HTTP/1.1 Upgrade) through canaryd with a real client and server
//! (tokio-tungstenite): the version is chosen once at the upgrade request, and an open
//! WebSocket survives config changes.

mod support;

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A WebSocket echo server answering `<name>:<text>`.
async fn ws_origin(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        if ws.send(Message::text(format!("{name}:{t}"))).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_echo_survives_a_reload() {
    let (stable, canary) = (ws_origin("stable").await, ws_origin("canary").await);
    let yaml = format!(
        r#"listeners: [{{ address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
routes:
  - name: ws
    versions:
      stable: {{ endpoints: ["{stable}"] }}
      canary: {{ endpoints: ["{canary}"], weight: 0 }}
    rules:
      - {{ to: canary, when: {{ header: {{ name: x-canary, equals: always }} }} }}
"#
    );
    let proxy = Proxy::start(&yaml).await;

    let mut req = format!("ws://{}/chat", proxy.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("x-canary", "always".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("canary:hello")
    );

    // Send everyone to stable and drop the rule: the open socket stays on canary.
    let (code, _) = proxy
        .admin_call("PUT", "/api/v1/routes/ws/weights", r#"{"canary": 0}"#)
        .await;
    assert_eq!(code, 200);
    assert!(proxy.generation() >= 2);
    for i in 0..5 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("canary:m{i}"))
        );
    }
    ws.close(None).await.unwrap();

    // A new socket without the header goes to stable.
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/", proxy.addr), tcp)
        .await
        .unwrap();
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("stable:x"));
}

#[tokio::test]
async fn refused_upgrade_is_a_normal_response() {
    // A plain HTTP origin answers the upgrade request with 200: no tunnel, normal response.
    let origin = Origin::start("plain").await;
    let proxy = Proxy::start(&format!(
        "listeners: [{{ address: \"127.0.0.1:0\" }}]\nroutes:\n  - name: r\n    versions: {{ v: {{ endpoints: [\"{}\"] }} }}\n",
        origin.addr
    ))
    .await;
    let r = TestClient::http1()
        .get(
            &proxy.url("/"),
            &[("connection", "upgrade"), ("upgrade", "websocket")],
        )
        .await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "plain"));
    let seen = origin.last();
    assert_eq!(
        seen.headers["upgrade"], "websocket",
        "upgrade forwarded to the upstream"
    );
    assert_eq!(seen.headers["connection"], "upgrade");
}
