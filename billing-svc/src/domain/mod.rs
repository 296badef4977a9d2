//! billing's pure rules: no tonic, no SQL. State machines, period arithmetic, money formatting,
//! plan-file parsing and validation live here and are tested without a network.

pub mod fingerprint;
pub mod money;
pub mod plan;
pub mod subscription;
pub mod validate;

use std::{fmt, str::FromStr};

/// A payment provider billing can collect through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    Alipay,
    WechatPay,
}

impl Provider {
    /// The name used in URLs (`/v1/webhooks/{provider}`) and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Alipay => "alipay",
            Provider::WechatPay => "wechatpay",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Provider {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "alipay" => Ok(Provider::Alipay),
            "wechatpay" => Ok(Provider::WechatPay),
            other => Err(format!("unknown payment provider {other:?}")),
        }
    }
}
