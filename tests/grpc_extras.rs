//! gRPC reflection (so grpcurl works unaided), the standard health service,
//! and request ids in gRPC metadata.
mod common;

use common::TestServer;
use tokio_stream::StreamExt as _;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_kms_service_and_describes_it() {
    let srv = TestServer::start().await;
    let addr = format!("http://{}", srv.running().grpc_addr);
    let channel = tonic::transport::Channel::from_shared(addr)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = ServerReflectionClient::new(channel);
    let reqs = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "ron.kms.v1.Kms".into(),
            )),
        },
    ];
    let mut stream = c
        .server_reflection_info(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("unexpected {first:?}")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"ron.kms.v1.Kms"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    let second = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(fd)) = second.message_response else {
        panic!("unexpected {second:?}")
    };
    assert!(!fd.file_descriptor_proto.is_empty());
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
