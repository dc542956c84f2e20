//! docs/openapi/ron-kms.yaml stays true: its paths and methods are exactly
//! the routes the router serves, every listed route answers on a live server
//! (not the not-found fallback), and the server serves the same document.
mod common;

use std::collections::BTreeSet;

use common::{Front, TestServer};
use ron_kms::api::http::{openapi_document, routes};

fn spec_routes() -> BTreeSet<(String, String)> {
    let doc = openapi_document().expect("the spec parses");
    assert_eq!(doc["openapi"], "3.1.0");
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete", "head", "options"]
                .contains(&method.as_str())
            {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn spec_paths_equal_the_router_table() {
    let table: BTreeSet<(String, String)> = routes()
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(spec_routes(), table);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_in_the_table_is_served() {
    let srv = TestServer::start().await;
    let c = srv.client(Front::Http, "").await;
    for (method, path) in routes() {
        let concrete = path
            .replace("{name}", "some-key")
            .replace("{version}", "1")
            .replace("{tenant}", "some-tenant");
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (status, body) = c.http_raw(m, &concrete, vec![]).await;
        let public = !concrete.starts_with("/v1/kms/")
            || concrete == "/v1/kms/openapi.json"
            || concrete.starts_with("/v1/kms/jwks/");
        if public {
            assert_eq!(status, 200, "{method} {path}: {body}");
        } else {
            // routed and authenticated first: 401, never the 404 fallback
            assert_eq!(status, 401, "{method} {path}: {body}");
        }
        // a method the route does not serve is 405, not 404
        let served: Vec<_> = routes()
            .into_iter()
            .filter(|(_, p)| *p == path)
            .map(|(m, _)| m)
            .collect();
        let other = ["PUT", "DELETE", "PATCH", "POST"]
            .into_iter()
            .find(|m| !served.contains(m))
            .map(|m| reqwest::Method::from_bytes(m.as_bytes()).unwrap())
            .unwrap();
        let (status, _) = c.http_raw(other, &concrete, vec![]).await;
        assert_eq!(status, 405, "{path}");
    }
    let (status, _) = c
        .http_raw(reqwest::Method::GET, "/v1/kms/not-a-route", vec![])
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_the_document() {
    let srv = TestServer::start().await;
    let c = srv.client(Front::Http, "").await;
    let (status, body) = c
        .http_raw(reqwest::Method::GET, "/v1/kms/openapi.json", vec![])
        .await;
    assert_eq!(status, 200);
    assert_eq!(&body, openapi_document().unwrap());
}
