//! The commerce-mesh contracts: generated prost messages, tonic clients and servers, and the encoded
//! `FileDescriptorSet` that server reflection and the edge proxy's JSON transcoding read.

/// Encoded `google.protobuf.FileDescriptorSet` of every contract (plus the google.api annotations).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// `google.api` types: HTTP annotations and the raw `HttpBody` used by webhooks.
pub mod google {
    #[allow(
        clippy::all,
        reason = "generated code: lints that fire depend on the contract"
    )]
    pub mod api {
        include!(concat!(env!("OUT_DIR"), "/google.api.rs"));
    }
}

/// The commerce-mesh services.
pub mod commerce {
    /// Accounts, sessions, API keys and signing keys (auth-svc, port 9001).
    pub mod auth {
        #[allow(
            clippy::all,
            reason = "generated code: lints that fire depend on the contract"
        )]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/commerce.auth.v1.rs"));
        }
    }
    /// Plans, subscriptions, payments and provider webhooks (billing-svc, port 9002).
    pub mod billing {
        #[allow(
            clippy::all,
            reason = "generated code: lints that fire depend on the contract"
        )]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/commerce.billing.v1.rs"));
        }
    }
    /// Entitlements, check-and-consume and usage logs (quota-svc, port 9003).
    pub mod quota {
        #[allow(
            clippy::all,
            reason = "generated code: lints that fire depend on the contract"
        )]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/commerce.quota.v1.rs"));
        }
    }
}

pub use commerce::{auth::v1 as auth, billing::v1 as billing, quota::v1 as quota};
