//! Plans: the public price list, admin creation and updates, and the plans file.

use billing_svc::domain::plan::PlansFile;
use prost_types::FieldMask;
use proto::billing::{
    BillingInterval, CreatePlanRequest, GetPlanRequest, ListPlansRequest, Plan, QuotaLimit,
    UpdatePlanRequest,
};
use tonic::{Code, Request};
use uuid::Uuid;

use super::harness::{Mesh, PLANS};

fn plan(code: &str, price: i64) -> Plan {
    Plan {
        plan_code: code.to_owned(),
        name: format!("Plan {code}"),
        price_amount_minor: price,
        currency: "CNY".to_owned(),
        billing_interval: BillingInterval::Month as i32,
        interval_count: 1,
        quota_limits: vec![QuotaLimit {
            metric: "analyses".to_owned(),
            limit: 5,
            unlimited: false,
        }],
        active: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn the_price_list_is_public_cheapest_first_and_pages() {
    let mesh = Mesh::start().await;
    let mut client = mesh.billing_client();
    for (code, price) in [("c", 500), ("a", 500), ("b", 100)] {
        client
            .create_plan(mesh.as_admin(CreatePlanRequest {
                plan: Some(plan(code, price)),
            }))
            .await
            .unwrap();
    }
    let mut codes = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_plans(Request::new(ListPlansRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(page.plans.len() <= 2);
        codes.extend(page.plans.into_iter().map(|plan| plan.plan_code));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(codes, ["b", "a", "c", "basic", "pro"]);

    let hidden = || ListPlansRequest {
        include_inactive: true,
        ..Default::default()
    };
    let anonymous = client.list_plans(Request::new(hidden())).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let user = client
        .list_plans(mesh.as_user(Uuid::now_v7(), hidden()))
        .await
        .unwrap_err();
    assert_eq!(user.code(), Code::PermissionDenied);
    let admin = client.list_plans(mesh.as_admin(hidden())).await.unwrap();
    assert_eq!(admin.into_inner().plans.len(), 5);
    let got = client
        .get_plan(Request::new(GetPlanRequest {
            plan_code: "pro".to_owned(),
        }))
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();
    assert_eq!(got.price_amount_minor, 9900);
    assert!(
        got.quota_limits
            .iter()
            .any(|l| l.metric == "exports" && l.unlimited)
    );
    let missing = client
        .get_plan(Request::new(GetPlanRequest {
            plan_code: "nope".to_owned(),
        }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn creating_plans_needs_an_admin_and_valid_fields() {
    let mesh = Mesh::start().await;
    let mut client = mesh.billing_client();
    let user = client
        .create_plan(mesh.as_user(
            Uuid::now_v7(),
            CreatePlanRequest {
                plan: Some(plan("x", 1)),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(user.code(), Code::PermissionDenied);
    let anonymous = client
        .create_plan(Request::new(CreatePlanRequest {
            plan: Some(plan("x", 1)),
        }))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    for (bad, field) in [
        (
            Plan {
                price_amount_minor: 0,
                ..plan("x", 1)
            },
            "price_amount_minor",
        ),
        (
            Plan {
                currency: "cny".into(),
                ..plan("x", 1)
            },
            "currency",
        ),
        (
            Plan {
                billing_interval: 0,
                ..plan("x", 1)
            },
            "billing_interval",
        ),
        (
            Plan {
                interval_count: 37,
                ..plan("x", 1)
            },
            "interval_count",
        ),
        (
            Plan {
                plan_code: "X Y".into(),
                ..plan("x", 1)
            },
            "plan_code",
        ),
        (
            Plan {
                quota_limits: vec![QuotaLimit {
                    metric: "Bad!".into(),
                    ..Default::default()
                }],
                ..plan("x", 1)
            },
            "quota_limits.metric",
        ),
    ] {
        let err = client
            .create_plan(mesh.as_admin(CreatePlanRequest { plan: Some(bad) }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
    }
    let taken = client
        .create_plan(mesh.as_admin(CreatePlanRequest {
            plan: Some(plan("basic", 1)),
        }))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn update_plan_changes_only_the_masked_fields() {
    let mesh = Mesh::start().await;
    let mut client = mesh.billing_client();
    let update = |paths: &[&str], plan: Plan| UpdatePlanRequest {
        plan_code: "basic".to_owned(),
        plan: Some(plan),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
    };
    let changed = client
        .update_plan(mesh.as_admin(update(
            &["name", "price_amount_minor"],
            Plan {
                name: "Basic+".into(),
                price_amount_minor: 2999,
                currency: "USD".into(),
                ..Default::default()
            },
        )))
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();
    assert_eq!(changed.name, "Basic+");
    assert_eq!(changed.price_amount_minor, 2999);
    assert_eq!(changed.currency, "CNY", "not in the mask");
    assert_eq!(changed.quota_limits.len(), 1);

    for (paths, want) in [
        (vec![], Code::InvalidArgument),
        (vec!["plan_code"], Code::InvalidArgument),
        (vec!["created_at"], Code::InvalidArgument),
    ] {
        let err = client
            .update_plan(mesh.as_admin(update(&paths, Plan::default())))
            .await
            .unwrap_err();
        assert_eq!(err.code(), want, "{paths:?}");
        assert!(
            err.message().starts_with("update_mask"),
            "{}",
            err.message()
        );
    }
    let invalid = client
        .update_plan(mesh.as_admin(update(&["price_amount_minor"], Plan::default())))
        .await
        .unwrap_err();
    assert!(
        invalid.message().starts_with("price_amount_minor"),
        "{}",
        invalid.message()
    );
    let missing = client
        .update_plan(mesh.as_admin(UpdatePlanRequest {
            plan_code: "nope".into(),
            ..update(
                &["name"],
                Plan {
                    name: "N".into(),
                    ..Default::default()
                },
            )
        }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn the_plans_file_is_idempotent_and_withdraws_unlisted_plans() {
    let mesh = Mesh::start().await;
    let again = mesh
        .billing
        .apply_plans_file(&PlansFile::parse(PLANS).unwrap())
        .await
        .unwrap();
    assert_eq!(again, Default::default(), "nothing changes the second time");

    let fewer = PLANS.replace("price = 9900", "price = 8800");
    let fewer = &fewer[..fewer.find("[[plan]]\ncode = \"pro\"").unwrap()];
    let fewer = fewer.replace("\"analyses\" = 10 }", "\"analyses\" = 20 }");
    let applied = mesh
        .billing
        .apply_plans_file(&PlansFile::parse(&fewer).unwrap())
        .await
        .unwrap();
    assert_eq!(applied.deactivated, ["pro"]);
    assert!(applied.created.is_empty() && applied.updated.is_empty());
    assert_eq!(applied.defaults_version, Some(2));
    let listed: Vec<String> = mesh
        .billing_client()
        .list_plans(Request::new(ListPlansRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .plans
        .into_iter()
        .map(|plan| plan.plan_code)
        .collect();
    assert_eq!(listed, ["basic"]);
    let retired = mesh
        .billing_client()
        .get_plan(Request::new(GetPlanRequest {
            plan_code: "pro".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();
    assert!(!retired.active, "a retired plan is still shown");
    // The new free tier reaches quota-svc through the outbox.
    mesh.wait_for_limit(Uuid::now_v7(), "analyses", 20).await;
}
