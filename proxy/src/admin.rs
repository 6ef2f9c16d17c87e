//! The admin listener: `GET /metrics` (the Prometheus text of the proxy's
//! and the pool's metrics) and `GET /healthz`, on an address of its own
//! (`--admin-listen`, default `127.0.0.1:9464`), so the public listener
//! serves only functions and `/healthz` and the function names in the
//! metrics stay off the public network. hyper on the background runtime:
//! nothing here is on the data path. A scrape may lag a worker's calls by
//! up to `metrics::FLUSH_EVERY` (the workers publish their local counts on
//! that tick).

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::debug;

use crate::metrics;
use crate::routes::Routes;

/// Serves the admin endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, routes: Arc<Routes>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let routes = routes.clone();
                async move { Ok::<_, Infallible>(answer(&request, &routes)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service)
                .await;
            if let Err(e) = served {
                debug!(%peer, error = %e, "admin connection ended");
            }
        });
    }
}

/// The answer to one admin request.
pub fn answer(request: &Request<Incoming>, routes: &Routes) -> Response<Full<Bytes>> {
    respond(request.method(), request.uri().path(), routes)
}

fn respond(method: &Method, path: &str, routes: &Routes) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: Vec<u8>| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CACHE_CONTROL, "no-store")
            .body(Full::new(Bytes::from(body)))
            .expect("a response of known-good parts")
    };
    if method != Method::GET && method != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            b"only GET and HEAD\n".to_vec(),
        );
    }
    match path {
        "/metrics" => reply(StatusCode::OK, metrics::CONTENT_TYPE, metrics::render()),
        "/healthz" => {
            let snap = routes.snapshot();
            let body = serde_json::json!({"revision": snap.revision, "routes": snap.routes.len()});
            reply(
                StatusCode::OK,
                "application/json",
                body.to_string().into_bytes(),
            )
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            b"admin endpoints: /metrics, /healthz\n".to_vec(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(response: Response<Full<Bytes>>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn serves_metrics_and_health_only() {
        metrics::init();
        let routes = Routes::default();
        let r = respond(&Method::GET, "/metrics", &routes);
        assert_eq!(r.status(), StatusCode::OK);
        assert!(body(r).await.contains("cpub_proxy_rejections_total"));
        let r = respond(&Method::GET, "/healthz", &routes);
        assert_eq!(body(r).await, r#"{"revision":0,"routes":0}"#);
        assert_eq!(
            respond(&Method::GET, "/fn/x/", &routes).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&Method::POST, "/metrics", &routes).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
