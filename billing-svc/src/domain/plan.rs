//! Plans: their validation and the plans file (`billing-svc plans apply FILE`).

use std::collections::BTreeSet;

use chrono::{DateTime, Months, Utc};
use serde::Deserialize;

use super::validate::{self, Invalid};

/// The unit of a billing period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    Month,
    Year,
}

impl Interval {
    pub fn as_str(self) -> &'static str {
        match self {
            Interval::Month => "month",
            Interval::Year => "year",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "month" => Some(Interval::Month),
            "year" => Some(Interval::Year),
            _ => None,
        }
    }
}

/// A billing period's length: `count` calendar months or years.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub interval: Interval,
    pub count: i32,
}

impl Period {
    /// The end of the period starting at `start`, in calendar months (Jan 31 + 1 month = the last
    /// day of February); `None` past the calendar's range.
    pub fn end(self, start: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let per_unit = match self.interval {
            Interval::Month => 1,
            Interval::Year => 12,
        };
        let months = u32::try_from(self.count).ok()?.checked_mul(per_unit)?;
        start.checked_add_months(Months::new(months))
    }
}

/// A quota limit per billing period; `limit: None` is unlimited.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct QuotaLimit {
    pub metric: String,
    pub limit: Option<i64>,
}

/// A plan's terms, as created or updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanTerms {
    pub plan_code: String,
    pub name: String,
    pub description: String,
    pub price_amount_minor: i64,
    pub currency: String,
    pub period: Period,
    pub quota_limits: Vec<QuotaLimit>,
    pub active: bool,
}

impl PlanTerms {
    /// Every field's rule; the error names the first field that breaks one.
    pub fn validate(&self) -> Result<(), Invalid> {
        validate::plan_code("plan_code", &self.plan_code)?;
        validate::text("name", &self.name, 1, 100)?;
        validate::text("description", &self.description, 0, 2000)?;
        if self.price_amount_minor <= 0 {
            return Err(Invalid::new("price_amount_minor", "must be greater than 0"));
        }
        validate::currency("currency", &self.currency)?;
        if !(1..=36).contains(&self.period.count) {
            return Err(Invalid::new("interval_count", "must be between 1 and 36"));
        }
        validate_limits(&self.quota_limits)
    }
}

/// A plan field UpdatePlan can change (`plan_code` and the timestamps cannot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanField {
    Name,
    Description,
    Price,
    Currency,
    Interval,
    IntervalCount,
    QuotaLimits,
    Active,
}

impl PlanField {
    /// The field of an update mask path (proto field names; JSON's camelCase too).
    pub fn parse(path: &str) -> Option<Self> {
        Some(match path {
            "name" => PlanField::Name,
            "description" => PlanField::Description,
            "price_amount_minor" | "priceAmountMinor" => PlanField::Price,
            "currency" => PlanField::Currency,
            "billing_interval" | "billingInterval" => PlanField::Interval,
            "interval_count" | "intervalCount" => PlanField::IntervalCount,
            "quota_limits" | "quotaLimits" => PlanField::QuotaLimits,
            "active" => PlanField::Active,
            _ => return None,
        })
    }
}

/// A new value for one plan field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanChange {
    Name(String),
    Description(String),
    Price(i64),
    Currency(String),
    Interval(Interval),
    IntervalCount(i32),
    QuotaLimits(Vec<QuotaLimit>),
    Active(bool),
}

impl PlanTerms {
    /// Sets one field; [`PlanTerms::validate`] judges the result as a whole.
    pub fn apply(&mut self, change: PlanChange) {
        match change {
            PlanChange::Name(name) => self.name = name,
            PlanChange::Description(description) => self.description = description,
            PlanChange::Price(price) => self.price_amount_minor = price,
            PlanChange::Currency(currency) => self.currency = currency,
            PlanChange::Interval(interval) => self.period.interval = interval,
            PlanChange::IntervalCount(count) => self.period.count = count,
            PlanChange::QuotaLimits(limits) => self.quota_limits = limits,
            PlanChange::Active(active) => self.active = active,
        }
    }
}

/// Quota limits: valid metric names, each at most once, limits ≥ 0.
pub fn validate_limits(limits: &[QuotaLimit]) -> Result<(), Invalid> {
    let mut seen = BTreeSet::new();
    for limit in limits {
        validate::metric("quota_limits.metric", &limit.metric)?;
        if !seen.insert(limit.metric.as_str()) {
            return Err(Invalid::new(
                "quota_limits.metric",
                format!("{:?} appears twice", limit.metric),
            ));
        }
        if limit.limit.is_some_and(|value| value < 0) {
            return Err(Invalid::new("quota_limits.limit", "must not be negative"));
        }
    }
    Ok(())
}

/// The plans file: the free tier's limits and every plan on sale.
///
/// ```toml
/// [free]
/// limits = { "api.requests" = 100 }
///
/// [[plan]]
/// code = "pro-monthly"
/// name = "Pro"
/// price = 9900          # minor units (fen)
/// currency = "CNY"
/// interval = "month"    # or "year"
/// interval_count = 1    # optional, default 1
/// limits = { "api.requests" = 100000, "analysis" = "unlimited" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlansFile {
    pub free: Vec<QuotaLimit>,
    pub plans: Vec<PlanTerms>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    free: FreeDoc,
    #[serde(default, rename = "plan")]
    plans: Vec<PlanDoc>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FreeDoc {
    #[serde(default)]
    limits: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanDoc {
    code: String,
    name: String,
    #[serde(default)]
    description: String,
    price: i64,
    currency: String,
    interval: Interval,
    #[serde(default = "one")]
    interval_count: i32,
    #[serde(default)]
    limits: toml::Table,
    /// Listed plans are on sale unless this says otherwise.
    #[serde(default = "yes")]
    active: bool,
}

fn one() -> i32 {
    1
}

fn yes() -> bool {
    true
}

fn limits_of(field: &'static str, table: toml::Table) -> Result<Vec<QuotaLimit>, Invalid> {
    table
        .into_iter()
        .map(|(metric, value)| {
            let limit = match value {
                toml::Value::Integer(limit) => Some(limit),
                toml::Value::String(word) if word == "unlimited" => None,
                other => {
                    return Err(Invalid::new(
                        field,
                        format!("{metric}: expected a number or \"unlimited\", found {other}"),
                    ));
                }
            };
            Ok(QuotaLimit { metric, limit })
        })
        .collect()
}

impl PlansFile {
    /// Parses and validates a plans file; the error names the plan and field at fault.
    pub fn parse(text: &str) -> Result<Self, String> {
        let doc: FileDoc = toml::from_str(text).map_err(|err| err.to_string())?;
        let free = limits_of("free.limits", doc.free.limits).map_err(|err| err.to_string())?;
        validate_limits(&free).map_err(|err| format!("[free]: {err}"))?;
        let mut codes = BTreeSet::new();
        let mut plans = Vec::with_capacity(doc.plans.len());
        for plan in doc.plans {
            let code = plan.code.clone();
            let terms = PlanTerms {
                plan_code: plan.code,
                name: plan.name,
                description: plan.description,
                price_amount_minor: plan.price,
                currency: plan.currency,
                period: Period {
                    interval: plan.interval,
                    count: plan.interval_count,
                },
                quota_limits: limits_of("limits", plan.limits)
                    .map_err(|err| format!("plan {code:?}: {err}"))?,
                active: plan.active,
            };
            terms
                .validate()
                .map_err(|err| format!("plan {code:?}: {err}"))?;
            if !codes.insert(code.clone()) {
                return Err(format!("plan {code:?} is listed twice"));
            }
            plans.push(terms);
        }
        Ok(Self { free, plans })
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use chrono::TimeZone;

    use super::*;

    #[test]
    fn months_end_on_the_last_day_when_the_start_day_does_not_exist() {
        let jan31 = Utc.with_ymd_and_hms(2027, 1, 31, 10, 0, 0).unwrap();
        let month = Period {
            interval: Interval::Month,
            count: 1,
        };
        assert_eq!(
            month.end(jan31).unwrap(),
            Utc.with_ymd_and_hms(2027, 2, 28, 10, 0, 0).unwrap()
        );
        let leap = Utc.with_ymd_and_hms(2028, 1, 31, 0, 0, 0).unwrap();
        assert_eq!(
            month.end(leap).unwrap(),
            Utc.with_ymd_and_hms(2028, 2, 29, 0, 0, 0).unwrap()
        );
        let two_years = Period {
            interval: Interval::Year,
            count: 2,
        };
        assert_eq!(
            two_years.end(leap).unwrap(),
            Utc.with_ymd_and_hms(2030, 1, 31, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn the_plans_file_parses_with_defaults_and_names_what_is_wrong() {
        let file = PlansFile::parse(
            r#"
            [free]
            limits = { "api.requests" = 100 }

            [[plan]]
            code = "pro-monthly"
            name = "Pro"
            price = 9900
            currency = "CNY"
            interval = "month"
            limits = { "api.requests" = 100000, "analysis" = "unlimited" }
            "#,
        )
        .unwrap();
        assert_eq!(
            file.free,
            vec![QuotaLimit {
                metric: "api.requests".into(),
                limit: Some(100)
            }]
        );
        let plan = &file.plans[0];
        assert!(plan.active);
        assert_eq!(plan.period.count, 1);
        assert!(plan.quota_limits.contains(&QuotaLimit {
            metric: "analysis".into(),
            limit: None
        }));

        let bad_price = PlansFile::parse(
            "[[plan]]\ncode = \"x\"\nname = \"X\"\nprice = 0\ncurrency = \"CNY\"\ninterval = \"month\"\n",
        )
        .unwrap_err();
        assert!(bad_price.contains("\"x\"") && bad_price.contains("price_amount_minor"));
        let twice = PlansFile::parse(
            "[[plan]]\ncode = \"x\"\nname = \"X\"\nprice = 1\ncurrency = \"CNY\"\ninterval = \"month\"\n\
             [[plan]]\ncode = \"x\"\nname = \"X\"\nprice = 1\ncurrency = \"CNY\"\ninterval = \"year\"\n",
        )
        .unwrap_err();
        assert!(twice.contains("twice"), "{twice}");
        let word = PlansFile::parse("[free]\nlimits = { a = \"lots\" }\n").unwrap_err();
        assert!(word.contains("unlimited"), "{word}");
        assert!(PlansFile::parse("[[plan]]\ncode = 1\n").is_err());
    }
}
