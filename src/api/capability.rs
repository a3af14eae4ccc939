//! Capabilities a process may run without (`AppState`'s `Option`s: an API-only
//! process has no warehouse, a process without a broker no gateway). One
//! extractor each, answering 503 with the capability's stable code when this
//! process lacks it, so no handler re-checks. Place it after [`super::Principal`]
//! so an unauthenticated caller still gets 401.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use std::sync::Arc;

use super::{AppState, Error};

macro_rules! capability {
    ($(#[$doc:meta])* $name:ident($ty:ty) = $field:ident, $code:literal, $message:literal) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(pub Arc<$ty>);

        impl FromRequestParts<AppState> for $name {
            type Rejection = Error;
            async fn from_request_parts(_: &mut Parts, s: &AppState) -> Result<Self, Error> {
                s.$field.clone().map($name).ok_or_else(|| Error::new(StatusCode::SERVICE_UNAVAILABLE, $code, $message))
            }
        }

        impl std::ops::Deref for $name {
            type Target = $ty;
            fn deref(&self) -> &$ty {
                &self.0
            }
        }
    };
}

capability!(
    /// Subject requests and the retention report (need the warehouse): 503 `warehouse_unavailable`.
    DsrCap(crate::dsr::Dsr) = dsr, "warehouse_unavailable", "this process runs without the warehouse"
);
capability!(
    /// The governed read path and features (need the warehouse): 503 `warehouse_unavailable`.
    ServeCap(crate::serve::Serve) = serve, "warehouse_unavailable", "this process runs without the warehouse"
);
capability!(
    /// Signals and their review queues (need the warehouse): 503 `signals_unavailable`.
    SignalsCap(crate::signals::Signals) = signals, "signals_unavailable", "this process runs without the signals context"
);
capability!(
    /// The ingest gateway (needs the broker): 503 `gateway_unavailable`.
    GatewayCap(crate::gateway::Gateway) = gateway, "gateway_unavailable", "this process does not run the gateway"
);
