//! The in-memory order store both simulated providers keep: orders by `out_trade_no`, each
//! expired when next seen once its payment time has passed.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard, PoisonError},
};

use chrono::{DateTime, Utc};

/// What the book needs of a provider's order.
pub(super) trait BookedOrder: Clone {
    /// The merchant's order number, the book's key.
    fn out_trade_no(&self) -> &str;

    /// Whether `again`, opened under this order's number, asks for the same payment (a retry or
    /// a reload) rather than another one.
    fn is_reopened_by(&self, again: &Self) -> bool;

    /// Closes the order if it still waits for payment past its expiry; providers close unpaid
    /// orders lazily, so the book calls this before anyone sees the order.
    fn expire_if_due(&mut self, now: DateTime<Utc>);
}

/// Reopening an order number for another payment (another amount, subject or merchant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Inconsistent;

/// Why an order cannot be paid: it is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NotPayable;

/// Every order of one provider the simulator has seen.
#[derive(Debug)]
pub(super) struct OrderBook<O>(Mutex<HashMap<String, O>>);

impl<O> Default for OrderBook<O> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<O: BookedOrder> OrderBook<O> {
    /// Records an order, or returns the one opened before under the same number if `order`
    /// reopens it.
    pub(super) fn open(&self, order: O, now: DateTime<Utc>) -> Result<O, Inconsistent> {
        let mut orders = self.lock();
        let recorded = orders
            .entry(order.out_trade_no().to_owned())
            .or_insert_with(|| order.clone());
        if !recorded.is_reopened_by(&order) {
            return Err(Inconsistent);
        }
        recorded.expire_if_due(now);
        Ok(recorded.clone())
    }

    /// Runs `change` on the order numbered `out_trade_no` (expired first if due); `None` if
    /// unknown.
    pub(super) fn with_order<T>(
        &self,
        out_trade_no: &str,
        now: DateTime<Utc>,
        change: impl FnOnce(&mut O) -> T,
    ) -> Option<T> {
        let mut orders = self.lock();
        let order = orders.get_mut(out_trade_no)?;
        order.expire_if_due(now);
        Some(change(order))
    }

    /// [`Self::with_order`] on the first order `wanted` picks, for lookups by another number.
    pub(super) fn with_order_where<T>(
        &self,
        wanted: impl Fn(&O) -> bool,
        now: DateTime<Utc>,
        change: impl FnOnce(&mut O) -> T,
    ) -> Option<T> {
        let mut orders = self.lock();
        let order = orders.values_mut().find(|order| wanted(order))?;
        order.expire_if_due(now);
        Some(change(order))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, O>> {
        // No change to an order can panic half-way, so a poisoned map is still consistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
