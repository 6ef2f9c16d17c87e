//! Tells the control plane about crashes of this node's instances: the
//! pool queues the latest crash per function, this task posts each to
//! `POST /api/v1/functions/{name}/crashes` (bearer token, as the route
//! watch) so `cpub describe` can show it. Best effort: a report that cannot
//! be delivered after a few tries is logged and dropped (the next crash
//! brings a fresh one); calls never wait for it.

use std::time::Duration;

use containerpub_pool::CrashReport;
use containerpub_pool::Pool;
use containerpub_wire::api;
use tracing::{debug, warn};

/// Tries per report, and the pause between two.
const TRIES: u32 = 3;
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Posts the pool's crash reports forever.
pub async fn report(pool: Pool, control_url: String, token: String, node: String) {
    let client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            warn!(error = %e, "crash reports disabled: cannot build the client");
            return;
        }
    };
    loop {
        for crash in pool.next_crashes().await {
            send(&client, &control_url, &token, &node, &crash).await;
        }
    }
}

/// The wire form of a pool crash.
pub fn to_wire(node: &str, crash: &CrashReport) -> api::CrashReport {
    api::CrashReport {
        node: node.to_owned(),
        deployment_id: crash.deployment_id,
        exit_code: crash.exit.code,
        output: crash.exit.output.clone(),
        during_start: crash.during_start,
        count: crash.count,
    }
}

async fn send(client: &reqwest::Client, url: &str, token: &str, node: &str, crash: &CrashReport) {
    let body = to_wire(node, crash);
    let url = format!("{url}/api/v1/functions/{}/crashes", crash.function);
    for attempt in 1..=TRIES {
        let sent = client
            .post(&url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                debug!(function = %crash.function, "crash reported");
                return;
            }
            // The control plane refused it (the function is gone, …): no retry.
            Ok(r) if r.status().is_client_error() => {
                let status = r.status();
                let text: String = r
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect();
                debug!(function = %crash.function, %status, body = %text, "crash report refused");
                return;
            }
            Ok(r) => {
                debug!(function = %crash.function, status = %r.status(), attempt, "crash report failed")
            }
            Err(e) => {
                debug!(function = %crash.function, error = %e, attempt, "crash report failed")
            }
        }
        if attempt < TRIES {
            tokio::time::sleep(RETRY_AFTER).await;
        }
    }
    warn!(function = %crash.function, "crash report not delivered to the control plane");
}
