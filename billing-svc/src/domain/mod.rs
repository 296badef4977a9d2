//! billing's pure rules: no tonic, no SQL. State machines, period arithmetic, money formatting,
//! plan-file parsing and validation live here and are tested without a network.

/// A closed set of values stored as text: one `as_str` and one `parse`, matching the column's
/// CHECK constraint.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// The value stored in the database.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// The variant of a stored value.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

pub mod fingerprint;
pub mod money;
pub mod plan;
pub mod refund;
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
