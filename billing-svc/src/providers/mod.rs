//! Payment providers behind one trait: billing's rules never see a provider's wire format.
//! One module per provider; each speaks the provider's real protocol, so pointing it at the
//! provider simulator or at the provider itself is configuration alone.

pub mod alipay;
pub mod rsa_keys;
pub mod wechat;
pub mod wechat_v3;

use chrono::{DateTime, Utc};

use crate::domain::Provider;

/// What billing asks a provider to collect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutOrder {
    /// Our merchant order number: the payment id without hyphens (32 hex digits).
    pub out_trade_no: String,
    /// Amount in minor units (fen), > 0.
    pub amount_minor: i64,
    /// ISO 4217 currency, e.g. `CNY`.
    pub currency: String,
    /// What the buyer sees, e.g. the plan's name.
    pub subject: String,
    /// Where the provider posts its asynchronous notification.
    pub notify_url: String,
    /// Where the buyer's browser goes after paying (page checkouts).
    pub return_url: String,
    /// After this the order can no longer be paid.
    pub expires_at: DateTime<Utc>,
}

/// How the buyer completes a checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkout {
    /// Send the buyer's browser to this URL (Alipay page pay).
    RedirectUrl(String),
    /// Show this URL as a QR code (WeChat Pay Native).
    QrCodeUrl(String),
}

/// A trade's state at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TradeStatus {
    /// Created, not paid yet.
    Pending,
    /// Paid.
    Paid,
    /// Closed unpaid (expired or closed by us), or fully refunded.
    Closed,
    /// The provider reported a failed payment.
    Failed,
}

/// A trade as the provider reports it (query or notification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trade {
    pub out_trade_no: String,
    /// The provider's transaction number; `None` if it has none yet.
    pub trade_no: Option<String>,
    pub status: TradeStatus,
    /// Amount in minor units as the provider states it.
    pub amount_minor: i64,
    /// ISO 4217 currency as the provider states it (CNY when the protocol implies it).
    pub currency: String,
    /// When the buyer paid, if paid and stated.
    pub paid_at: Option<DateTime<Utc>>,
}

/// An asynchronous notification exactly as it arrived.
#[derive(Debug, Clone)]
pub struct RawNotification {
    pub content_type: String,
    pub body: Vec<u8>,
    /// Lower-case header names with their values (the signature headers some providers use).
    pub headers: Vec<(String, String)>,
}

/// A notification whose signature verified and which names our merchant account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The provider's id of this notification, the same on every retry (dedupe and audit).
    pub notification_id: String,
    pub event: NotificationEvent,
}

/// What a notification reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotificationEvent {
    /// A trade's new state (paid, closed, failed).
    Trade(Trade),
    /// The outcome of a refund we asked for (WeChat Pay's refund notification).
    Refund(RefundUpdate),
}

/// What billing asks a provider to refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundOrder {
    pub out_trade_no: String,
    /// Names this refund at the provider (Alipay `out_request_no`, WeChat Pay `out_refund_no`,
    /// at most 64 characters): the same on every retry, so a retry never refunds twice.
    pub out_refund_no: String,
    /// Amount to refund in minor units, > 0.
    pub amount_minor: i64,
    /// The whole payment in minor units (WeChat Pay states it with every refund).
    pub total_minor: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// Shown to the buyer where the provider shows one.
    pub reason: String,
    /// Where the provider posts the refund's outcome (WeChat Pay); Alipay answers at once.
    pub notify_url: String,
}

/// Where a refund stands at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundStatus {
    /// The money is on its way back to the buyer.
    Succeeded,
    /// Accepted; the outcome comes later (a notification or a query).
    Processing,
    /// The provider gave up on it (WeChat Pay `CLOSED`/`ABNORMAL`); nothing was refunded.
    Failed,
}

/// A refund as the provider reports it (answer, query or notification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundUpdate {
    pub out_trade_no: String,
    pub out_refund_no: String,
    pub status: RefundStatus,
    /// The amount of this refund in minor units, as the provider states it.
    pub amount_minor: i64,
    /// The provider's id of the refund, when it states one.
    pub refund_id: Option<String>,
}

/// Why a notification was refused. Each is recorded with the raw body; none changes a payment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unparseable notification: {0}")]
    Malformed(String),
    #[error("signature missing or invalid")]
    BadSignature,
    #[error("notification for another merchant account: {0}")]
    WrongMerchant(String),
    #[error("notification too old or from the future")]
    Stale,
}

/// The body the provider expects in answer to a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledgement {
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// A provider call that did not give an answer we can act on. Always safe to retry.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Network failure, timeout, 5xx, or a response whose signature did not verify.
    #[error("{provider} unavailable: {cause}")]
    Unavailable { provider: Provider, cause: String },
    /// The provider refused the request (a business error code).
    #[error("{provider} refused: {code}: {message}")]
    Refused {
        provider: Provider,
        code: String,
        message: String,
    },
}

/// One payment provider.
#[async_trait::async_trait]
pub trait PaymentProvider: Send + Sync + 'static {
    /// Which provider this is.
    fn provider(&self) -> Provider;

    /// Creates the checkout for an order. Repeating it for the same order gives a usable checkout
    /// again (retries after a failure resume here).
    async fn create_checkout(&self, order: &CheckoutOrder) -> Result<Checkout, ProviderError>;

    /// The trade's state at the provider; `Ok(None)` if the provider does not know the order
    /// (never paid nor opened by the buyer).
    async fn query(&self, out_trade_no: &str) -> Result<Option<Trade>, ProviderError>;

    /// Closes an unpaid order so it can no longer be paid. Closing an order the provider does
    /// not know, or one already closed, succeeds.
    async fn close(&self, out_trade_no: &str) -> Result<(), ProviderError>;

    /// Refunds part or all of a paid order. Repeating it with the same `out_refund_no` never
    /// refunds twice; it answers the state of that refund.
    async fn refund(&self, order: &RefundOrder) -> Result<RefundUpdate, ProviderError>;

    /// Verifies a notification's signature and merchant account and parses it.
    fn verify_notification(
        &self,
        notification: &RawNotification,
        now: DateTime<Utc>,
    ) -> Result<Notification, Refusal>;

    /// The answer that tells the provider the notification was received.
    fn acknowledgement(&self) -> Acknowledgement;
}
