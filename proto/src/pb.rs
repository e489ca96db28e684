//! The generated protobuf messages and gRPC service stubs (`build.rs`, from `proto/`).
//!
//! - [`cloudevents`], short for [`io::cloudevents::v1`] (`io.cloudevents.v1`): the CloudEvents protobuf format.
//! - [`cemesh::v1`] (`cemesh.v1`): cemesh's own services (`Publisher`, `Admin`).
//! - [`externalscaler`]: KEDA's external scaler service.
//!
//! The modules mirror the protobuf packages because the generated code refers to
//! other packages by relative path. The service stubs are transport-free; the broker
//! brings tonic's server and client.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod io {
    pub mod cloudevents {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/io.cloudevents.v1.rs"));
        }
    }
}

pub mod cemesh {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/cemesh.v1.rs"));
    }
}

/// KEDA's external scaler service (`externalscaler`), which the broker serves.
pub mod externalscaler {
    include!(concat!(env!("OUT_DIR"), "/externalscaler.rs"));
}

pub use io::cloudevents::v1 as cloudevents;

/// The well-known types (`google.protobuf.*`) the generated messages use, so users
/// need no `prost-types` dependency of their own.
pub use prost_types;

/// The encoded `FileDescriptorSet` of every `.proto` file (imports included), for
/// gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cemesh_descriptor.bin"));
