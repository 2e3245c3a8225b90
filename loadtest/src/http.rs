//! A keep-alive HTTP/1.1 client for publishing (hyper), reconnecting when the server closes
//! the connection.

use std::io;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::client;
use crate::opts::HttpEndpoint;

pub struct HttpClient {
    ep: HttpEndpoint,
    tx: Option<SendRequest<Full<Bytes>>>,
}

/// A response: status and body.
pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

impl HttpClient {
    pub fn new(ep: HttpEndpoint) -> HttpClient {
        HttpClient { ep, tx: None }
    }

    async fn connect(&mut self) -> io::Result<&mut SendRequest<Full<Bytes>>> {
        let stream = client::open(self.ep.addr, None).await?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(self.tx.insert(tx))
    }

    /// POSTs `body` as JSON to the endpoint's path.
    pub async fn post_json(&mut self, body: Bytes) -> io::Result<Response> {
        let usable = match self.tx.as_mut() {
            Some(tx) if !tx.is_closed() => tx.ready().await.is_ok(),
            _ => false,
        };
        let req = hyper::Request::post(self.ep.path.as_str())
            .header(hyper::header::HOST, self.ep.host.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(io::Error::other)?;
        let tx = if usable {
            self.tx.as_mut().expect("checked above")
        } else {
            self.connect().await?
        };
        let resp = match tx.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.tx = None;
                return Err(io::Error::other(e));
            }
        };
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(io::Error::other)?
            .to_bytes();
        Ok(Response { status, body })
    }
}
