//! ron-kms: a key-management service whose private keys never leave custody.
//!
//! The request path is `api` (gRPC and HTTP fronts, auth) → [`service`] (every
//! operation, once) → [`keyring`] (in-memory snapshot of key records) →
//! [`backend`] (custody: the private-key operations) with [`crypto`] doing the
//! public-key and envelope work and [`store`] persisting records. See
//! `docs/architecture.md`.
#![forbid(unsafe_code)]

/// mimalloc instead of the system allocator (feature `mimalloc`, on by
/// default): requests allocate on one thread and free on another (the audit
/// writer, the connection tasks), which glibc's malloc handles poorly; its
/// cost showed up as ~5 µs per audited sign (PERFORMANCE.md). The fuzz
/// crate turns the feature off so the sanitizers see every allocation.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod admission;
pub mod api;
pub mod audit;
pub mod auth;
pub mod backend;
pub mod config;
pub mod crypto;
pub mod error;
pub mod ingress;
pub mod keyring;
pub mod ops;
pub mod policy;
pub mod runtime;
pub mod secret_file;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;

/// Generated protobuf messages and the tonic client/server for `ron.kms.v1`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("ron.kms.v1");

    /// Encoded `FileDescriptorSet` of `proto/`, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/kms_descriptor.bin"));
}

pub use error::Error;
