//! Storage of quota-svc in the `quota` schema: the consume batch transaction, entitlements,
//! refunds, the usage log and its maintenance. Functions take `&mut AsyncPgConnection` so the
//! caller decides the transaction (the batch transaction is built here as a whole).

pub mod consume;
pub mod entitlements;
pub mod schema;
pub mod usage;

use diesel::{
    QueryResult,
    pg::Pg,
    query_builder::{AstPass, Query, QueryFragment, QueryId},
};

/// The units `k.subject` holds of `k.metric` in the calendar month `[$3, $4)`: its consumptions
/// of the month that were not refunded, as a LATERAL subquery yielding `used`. A default-tier
/// counter created mid-month (a plan ended, the metric was added back to the free tier) starts
/// from it, so the month's free allowance is not handed out twice. Grouping by usage id pairs
/// each refund with its consumption; a refund of last month's consumption has none and counts
/// for nothing.
const MONTH_USAGE: &str = "SELECT COALESCE(SUM(n.net), 0)::int8 AS used FROM ( \
       SELECT SUM(CASE u.kind WHEN 'consume' THEN u.amount ELSE -u.amount END) AS net, \
              bool_or(u.kind = 'consume') AS consumed \
       FROM usage_events u \
       WHERE u.subject = k.subject AND u.metric = k.metric \
         AND u.occurred_at >= $3 AND u.occurred_at < $4 \
       GROUP BY u.usage_id) n \
     WHERE n.consumed";

/// A hand-written statement each connection prepares once: `sql_query` prepares its text again,
/// in a round trip of its own, on every call. Every execution is still planned with its values
/// (kit's connections carry `plan_cache_mode = force_custom_plan`). Only for fixed SQL text with
/// an explicit select list: each distinct text stays cached on every connection.
#[derive(Debug, Clone)]
pub struct Prepared<Q>(pub Q);

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Prepared<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

// No static id: the statement cache keys the statement by its SQL text and bind types.
impl<Q> QueryId for Prepared<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Prepared<Q> {
    type SqlType = Q::SqlType;
}
