//! gRPC reflection, v1 and v1alpha (so grpcurl and grpcio-reflection work unaided), the standard health service,
//! and request ids in gRPC metadata.
mod common;

use common::TestServer;
use tokio_stream::StreamExt as _;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Reflection as `v1` and as `v1alpha` (the same protocol under the older
/// package name): each lists the services and describes `ron.kms.v1.Kms`.
macro_rules! reflect {
    ($v:ident, $channel:expr) => {{
        use tonic_reflection::pb::$v::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$v::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$v::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::$v::ServerReflectionRequest;
        let request = |m| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(m),
        };
        let reqs = vec![
            request(MessageRequest::ListServices(String::new())),
            request(MessageRequest::FileContainingSymbol(
                "ron.kms.v1.Kms".into(),
            )),
        ];
        let mut stream = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter(reqs))
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
            panic!("unexpected {first:?}")
        };
        let second = stream.next().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(fd)) = second.message_response else {
            panic!("unexpected {second:?}")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        (names, fd.file_descriptor_proto.len())
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_list_the_kms_service_and_describe_it() {
    let srv = TestServer::start().await;
    let addr = format!("http://{}", srv.running().grpc_addr);
    let channel = tonic::transport::Channel::from_shared(addr)
        .unwrap()
        .connect()
        .await
        .unwrap();
    for (version, (names, files)) in [
        ("v1", reflect!(v1, channel.clone())),
        ("v1alpha", reflect!(v1alpha, channel.clone())),
    ] {
        assert!(
            names.iter().any(|n| n == "ron.kms.v1.Kms"),
            "{version}: {names:?}"
        );
        assert!(
            names.iter().any(|n| n == "grpc.health.v1.Health"),
            "{version}: {names:?}"
        );
        assert!(
            files > 0,
            "{version}: no file descriptor for ron.kms.v1.Kms"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving_and_responses_carry_request_ids() {
    let srv = TestServer::start().await;
    let addr = format!("http://{}", srv.running().grpc_addr);
    let channel = tonic::transport::Channel::from_shared(addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = HealthClient::new(channel);
    for service in ["", "ron.kms.v1.Kms"] {
        let r = h
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }

    let mut k = ron_kms::proto::kms_client::KmsClient::connect(addr)
        .await
        .unwrap();
    let mut req = tonic::Request::new(ron_kms::proto::ListKeysRequest::default());
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", srv.admin_token).parse().unwrap(),
    );
    let ok = k.list_keys(req).await.unwrap();
    let rid = ok.metadata().get("x-request-id").unwrap().to_str().unwrap();
    assert_eq!(rid.len(), 16);
    let err = k
        .list_keys(ron_kms::proto::ListKeysRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        err.metadata()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap()
            .len(),
        16
    );
}
