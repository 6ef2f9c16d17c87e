//! CI smoke of the load generator on the real stack: a short closed-loop and
//! open-loop run of `containerpub-loadtest` through cpub-proxy to one warm
//! function must produce results and no errors. The full proxy comparison
//! (`scripts/compare.sh`) is not run in CI; see `docs/BENCHMARKS.md`.

use std::time::Duration;

use containerpub_e2e::Stack;
use containerpub_loadtest::{AllowList, Mode, Plan, Report, Target, TargetSet};

fn plan(url: &str, mode: Mode, connections: usize) -> Plan {
    let target = Target::parse("url", url, &AllowList::default()).expect("loopback target");
    let mut plan = Plan::new(TargetSet::single(target));
    plan.mode = mode;
    plan.connections = connections;
    plan.duration = Some(Duration::from_secs(2));
    plan.timeout = Duration::from_secs(10);
    plan
}

fn assert_clean(report: &Report, stack: &Stack) {
    assert!(
        report.requests > 0,
        "no requests completed:\n{}\n{}",
        report.table(),
        stack.logs()
    );
    assert_eq!(
        report.errors.total,
        0,
        "errors:\n{}\n{}",
        report.table(),
        stack.logs()
    );
    assert_eq!(report.ok, report.requests, "{}", report.table());
    assert_eq!(
        report.status.keys().collect::<Vec<_>>(),
        ["200"],
        "{}",
        report.table()
    );
    assert!(report.bytes_received > 0, "{}", report.table());
}

#[tokio::test]
async fn loadtest_smoke_through_the_proxy() {
    let stack = Stack::start(&[]).await.unwrap();
    let url = stack.deploy("hello", "smoke-hello", "");
    // Warm: the first call starts the instance.
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 200, "{}", stack.logs());

    let closed = containerpub_loadtest::run(plan(&url, Mode::Closed, 4)).await;
    eprintln!("{}", closed.table());
    assert_eq!(closed.mode, "closed");
    assert_clean(&closed, &stack);

    let open = containerpub_loadtest::run(plan(&url, Mode::Open { rate: 200.0 }, 4)).await;
    eprintln!("{}", open.table());
    assert_eq!(open.mode, "open");
    assert_clean(&open, &stack);
    let schedule = open.open_loop.expect("open-loop accounting");
    assert!(schedule.sent > 0, "{}", open.table());
}
