//! Short HTTP requests to another agent's API: a proxy asking a writer whether it still takes
//! writes, a primary asking every replica to hold off elections while the store is out of
//! reach. One connection per request, bounded as a whole by a timeout.

use std::time::Duration;

use axum::http::{header, Method, Request};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// `method path` on `host:port`, with the cluster's token when given: the status code and
/// body, or why there was none within `timeout`.
pub async fn request(
    host: &str,
    port: u16,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(u16, Bytes), String> {
    let addr = format!("{host}:{port}");
    let exchange = async {
        let stream = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &addr)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?;
        Ok((status, body.to_bytes()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{addr}: no answer within {} ms", timeout.as_millis()))?
}

/// `GET /status` of the agent at `host:port`, if it answers within `timeout`.
pub async fn status(host: &str, port: u16, timeout: Duration) -> Option<crate::NodeStatus> {
    let (code, body) = request(host, port, Method::GET, "/status", None, Vec::new(), timeout)
        .await
        .ok()?;
    (code == 200)
        .then(|| serde_json::from_slice(&body).ok())
        .flatten()
}
