//! End-to-end tests of access control on the real stack (cpub-control on
//! PostgreSQL, cpub-proxy with its node credential, the `cpub` CLI, real
//! builds through Podman):
//!
//! - `role_endpoint_matrix`: every control endpoint × every kind of caller
//!   (admin, developer on its own function, developer on another's, viewer,
//!   node credential), allowed and refused, with the 403 messages; then the
//!   audit log holds exactly the mutating calls the test (and the harness)
//!   made, with their results.
//! - `tokens_nodes_and_logins`: named, expiring, scoped tokens through the
//!   CLI, revocation on the next call, node credentials, role changes and
//!   removal taking effect at once, password change, the last-admin guard,
//!   login rate limits (429 + retry-after), and the audit log's refusal of
//!   UPDATE, DELETE and TRUNCATE.
//!
//! - `the_route_reader_sees_every_route_and_misses_are_reported`: the
//!   matrix's coverage check (every route of control's router has a row)
//!   reads the routes right and reports a route without a row.
//!
//! Over 600 lines: the matrix is one table of 48 endpoint rows × 5 callers, and both
//! tests walk one stack each through a story whose steps depend on the
//! previous ones (splitting them would start a stack, and build, per step).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use containerpub_e2e::{ADMIN_PASSWORD, RemoveImages, Stack, bin, bundle, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Runs `cpub` against the stack with `token`, feeding `stdin`.
fn cli(stack: &Stack, token: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(bin("cpub"))
        .args(args)
        .env("CPUB_URL", stack.control_url())
        .env("CPUB_TOKEN", token)
        .env("CPUB_CONFIG", stack.dir.path().join("access-cli.toml"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running cpub");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("cpub stdin");
    child.wait_with_output().expect("cpub output")
}

fn cli_ok(stack: &Stack, token: &str, args: &[&str], stdin: &str) -> String {
    let out = cli(stack, token, args, stdin);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cpub {args:?} failed:\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn cli_err(stack: &Stack, token: &str, args: &[&str], stdin: &str) -> String {
    let out = cli(stack, token, args, stdin);
    assert!(
        !out.status.success(),
        "cpub {args:?} should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An HTTP client for the API that gives every call its own request id and
/// remembers the mutating ones, to check the audit log against.
struct Api {
    http: reqwest::Client,
    base: String,
    next: AtomicU32,
    /// request id → (status answered, who, action path)
    mutating: std::sync::Mutex<BTreeMap<String, (u16, String)>>,
}

struct Answer {
    status: StatusCode,
    body: Value,
    retry_after: Option<u64>,
}

impl Answer {
    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }
}

impl Api {
    fn new(stack: &Stack) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: stack.control_url(),
            next: AtomicU32::new(0),
            mutating: Default::default(),
        }
    }

    async fn call(
        &self,
        who: &str,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Answer {
        let id = format!(
            "access-{}-{}",
            std::process::id(),
            self.next.fetch_add(1, Ordering::SeqCst)
        );
        let mut request = self
            .http
            .request(method.clone(), format!("{}/api/v1{path}", self.base))
            .header("x-request-id", &id);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        } else if method == Method::POST {
            request = request.body("x");
        }
        let response = request.send().await.expect("control plane answers");
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if method != Method::GET {
            self.mutating
                .lock()
                .unwrap()
                .insert(id, (status.as_u16(), who.to_owned()));
        }
        Answer {
            status,
            body,
            retry_after,
        }
    }

    async fn login(&self, username: &str, password: &str) -> Answer {
        self.call(
            username,
            None,
            Method::POST,
            "/auth/login",
            Some(json!({"username": username, "password": password})),
        )
        .await
    }

    async fn token(&self, username: &str, password: &str) -> String {
        let answer = self.login(username, password).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "login {username}: {:?}",
            answer.body
        );
        answer.body["token"].as_str().expect("token").to_owned()
    }
}

/// The `(method, template)` of every `/api/v1` route in
/// `control/src/routes.rs`, read from its `.route("…", get(…).post(…))`
/// calls (the router is built from those calls only).
fn control_routes() -> Vec<(Method, String)> {
    let path = containerpub_e2e::repo_root().join("control/src/routes.rs");
    let text = std::fs::read_to_string(&path).expect("control/src/routes.rs");
    let text = &text[text.find("pub fn router").expect("fn router")..];
    let text = &text[..text.find("\n}\n").expect("end of fn router")];
    let mut routes = Vec::new();
    for piece in text.split(".route(").skip(1) {
        let Some(rest) = piece.trim_start().strip_prefix('"') else {
            continue;
        };
        let template = &rest[..rest.find('"').expect("closing quote")];
        // The call's own text: up to its closing parenthesis.
        let mut depth = 1;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let call = &rest[..end];
        for (word, method) in [
            ("get(", Method::GET),
            ("post(", Method::POST),
            ("put(", Method::PUT),
            ("delete(", Method::DELETE),
            ("patch(", Method::PATCH),
        ] {
            let found = call.match_indices(word).any(|(i, _)| {
                i == 0
                    || !call.as_bytes()[i - 1].is_ascii_alphanumeric()
                        && call.as_bytes()[i - 1] != b'_'
            });
            if found {
                routes.push((method, template.to_owned()));
            }
        }
    }
    assert!(
        routes.len() >= 40,
        "read only {} routes from {}",
        routes.len(),
        path.display()
    );
    routes
}

/// Whether the concrete `path` (query ignored) is an instance of `template`.
fn matches_template(template: &str, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default();
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && t.ends_with('}') && !p.is_empty()) || t == p)
}

/// The control routes that no row of `rows` calls. Outside `/api/v1`
/// (`/healthz`, `/metrics`) nothing is access-controlled; `POST
/// /auth/login` takes no token (`tokens_nodes_and_logins` covers it).
fn uncovered_routes(rows: &[(Method, &str)]) -> Vec<String> {
    control_routes()
        .into_iter()
        .filter(|(method, template)| {
            !matches!(template.as_str(), "/healthz" | "/metrics" | "/auth/login")
                && !rows
                    .iter()
                    .any(|(m, p)| m == method && matches_template(template, p))
        })
        .map(|(method, template)| format!("{method} {template}"))
        .collect()
}

#[test]
fn the_route_reader_sees_every_route_and_misses_are_reported() {
    let routes = control_routes();
    for want in [
        (Method::GET, "/functions"),
        (Method::DELETE, "/functions/{name}"),
        (Method::POST, "/functions/{name}/deployments"),
        (Method::PUT, "/functions/{name}/secrets/{key}"),
        (Method::POST, "/logs"),
    ] {
        assert!(
            routes.iter().any(|(m, t)| *m == want.0 && t == want.1),
            "{want:?} not read: {routes:?}"
        );
    }
    assert!(!routes.iter().any(|(_, t)| t.contains("route_layer")));
    // With no rows, every route is reported; a row covers its template only.
    assert_eq!(uncovered_routes(&[]).len(), routes.len() - 3);
    let one = uncovered_routes(&[(Method::GET, "/functions/x/stats?since=1h")]);
    assert!(!one.contains(&"GET /functions/{name}/stats".to_owned()));
    assert!(one.contains(&"GET /functions/{name}/executions".to_owned()));
    assert!(matches_template("/builds/{id}/log", "/builds/7/log"));
    assert!(!matches_template("/builds/{id}", "/builds/7/log"));
    assert!(!matches_template("/builds/{id}", "/builds/"));
}

/// A caller of the matrix.
struct Who<'a> {
    label: &'a str,
    token: &'a str,
}

const ALICE_FN: &str = "acc-alice";
const BOB_FN: &str = "acc-bob";
const ADMIN_FN: &str = "acc-admin";

#[tokio::test]
async fn role_endpoint_matrix() {
    let _images = RemoveImages::of(&[ALICE_FN, BOB_FN, ADMIN_FN]);
    let stack = Stack::start(&[]).await.expect("stack");
    let admin = stack.token.clone();
    let api = Api::new(&stack);
    let mut cli_mutations = 0usize;
    for (user, role) in [
        ("alice", "developer"),
        ("bob", "developer"),
        ("vera", "viewer"),
    ] {
        let out = cli_ok(
            &stack,
            &admin,
            &["user", "add", user, "--role", role, "--password-stdin"],
            &format!("{user}-password-1\n"),
        );
        assert!(
            out.contains(&format!("added user {user} ({role})")),
            "{out}"
        );
        cli_mutations += 1;
    }
    let alice = api.token("alice", "alice-password-1").await;
    let bob = api.token("bob", "bob-password-1").await;
    let vera = api.token("vera", "vera-password-1").await;
    let node = stack.node_token.clone();

    // Deploys through the CLI: a developer's own new function, another's,
    // and an admin's deploy of a developer's function (a new version).
    for (token, name) in [(&alice, ALICE_FN), (&bob, BOB_FN), (&admin, ADMIN_FN)] {
        let dir = bundle("hello", name, "");
        cli_ok(&stack, token, &["deploy", dir.path().to_str().unwrap()], "");
        cli_mutations += 1;
    }
    let dir = bundle("hello", BOB_FN, "");
    cli_ok(
        &stack,
        &admin,
        &["deploy", dir.path().to_str().unwrap()],
        "",
    );
    cli_mutations += 1;
    let dir = bundle("hello", ALICE_FN, "");
    cli_ok(
        &stack,
        &alice,
        &["deploy", dir.path().to_str().unwrap()],
        "",
    );
    cli_mutations += 1;
    // Refused deploys through the CLI: the message reaches the user.
    let dir = bundle("hello", ALICE_FN, "");
    let err = cli_err(&stack, &bob, &["deploy", dir.path().to_str().unwrap()], "");
    assert!(
        err.contains("function acc-alice is owned by user alice"),
        "{err}"
    );
    let err = cli_err(&stack, &vera, &["deploy", dir.path().to_str().unwrap()], "");
    assert!(err.contains("role viewer cannot deploy functions"), "{err}");
    cli_mutations += 2;
    let versions = |f: &'static str| {
        let api = &api;
        let admin = admin.clone();
        async move {
            let answer = api
                .call(
                    "admin",
                    Some(&admin),
                    Method::GET,
                    &format!("/functions/{f}"),
                    None,
                )
                .await;
            answer.body["active_version"].as_i64()
        }
    };
    assert_eq!(versions(ALICE_FN).await, Some(2));
    assert_eq!(
        versions(BOB_FN).await,
        Some(2),
        "the admin deployed v2 of bob's"
    );
    let deployment_id = {
        let answer = api
            .call(
                "admin",
                Some(&admin),
                Method::GET,
                &format!("/functions/{ALICE_FN}/deployments"),
                None,
            )
            .await;
        answer.body[0]["id"].as_i64().expect("deployment id")
    };

    // A token of vera's, for the revocation row (within her login's
    // lifetime: a login's token expires, and mints nothing that outlives it).
    let victim = api
        .call(
            "vera",
            Some(&vera),
            Method::POST,
            "/tokens",
            Some(json!({"name": "victim", "expires": "1d"})),
        )
        .await;
    assert_eq!(victim.status, StatusCode::CREATED, "{:?}", victim.body);
    let victim_id = victim.body["info"]["id"].as_i64().expect("token id");

    let admin_who = Who {
        label: "admin",
        token: &admin,
    };
    let dev_own = Who {
        label: "developer on its own function",
        token: &alice,
    };
    let dev_other = Who {
        label: "developer on another's function",
        token: &bob,
    };
    let viewer = Who {
        label: "viewer",
        token: &vera,
    };
    let node_who = Who {
        label: "node credential",
        token: &node,
    };
    let callers = [&admin_who, &dev_own, &dev_other, &viewer, &node_who];
    let node_refusal = "a node credential (node ";
    let crash = |node_name: &str| {
        json!({"node": node_name, "deployment_id": deployment_id, "exit_code": 1,
               "output": "boom", "during_start": true, "count": 1})
    };

    // (method, path, body, expected per caller: Ok(status) or Err(message part))
    type Expect = Result<u16, &'static str>;
    let reads: [Expect; 5] = [Ok(200), Ok(200), Ok(200), Ok(200), Err(node_refusal)];
    let admin_only = |what: &'static str| -> [Expect; 5] {
        [Ok(200), Err(what), Err(what), Err(what), Err(node_refusal)]
    };
    // A function's own business: the owner and admins do it (`allowed` is
    // what they get), another developer and a viewer are refused.
    let manage = |allowed: u16| -> [Expect; 5] {
        [
            Ok(allowed),
            Ok(allowed),
            Err(
                "function acc-alice is owned by user alice; role developer may only manage functions it owns",
            ),
            Err("role viewer cannot manage functions (needs developer)"),
            Err(node_refusal),
        ]
    };
    let node_post =
        |what: &'static str| -> [Expect; 5] { [Ok(400), Err(what), Err(what), Err(what), Ok(400)] };
    let stack_node = stack.node.clone();
    let rows: Vec<(Method, String, Option<Value>, [Expect; 5])> = vec![
        (Method::GET, "/functions".into(), None, reads),
        (Method::GET, format!("/functions/{ALICE_FN}"), None, reads),
        (
            Method::GET,
            format!("/functions/{ALICE_FN}/deployments"),
            None,
            reads,
        ),
        (
            Method::GET,
            format!("/functions/{ALICE_FN}/crashes"),
            None,
            reads,
        ),
        (
            Method::GET,
            format!("/routes?node={stack_node}"),
            None,
            [
                Ok(200),
                Err("role developer cannot watch routes (node credentials and admins only)"),
                Err("role developer cannot watch routes"),
                Err("role viewer cannot watch routes"),
                Ok(200),
            ],
        ),
        (
            Method::GET,
            "/routes?node=someone-else".into(),
            None,
            [
                Ok(200),
                Err("role developer cannot watch routes"),
                Err("role developer cannot watch routes"),
                Err("role viewer cannot watch routes"),
                Err("this credential belongs to node e2e-"),
            ],
        ),
        (
            Method::POST,
            format!("/functions/{ALICE_FN}/crashes"),
            Some(crash(&stack_node)),
            [
                Ok(204),
                Err("role developer cannot report crashes (node credentials and admins only)"),
                Err("role developer cannot report crashes"),
                Err("role viewer cannot report crashes"),
                Ok(204),
            ],
        ),
        (
            Method::POST,
            format!("/functions/{ALICE_FN}/crashes"),
            Some(crash("someone-else")),
            [
                Ok(204),
                Err("role developer cannot report crashes"),
                Err("role developer cannot report crashes"),
                Err("role viewer cannot report crashes"),
                Err("not to node someone-else"),
            ],
        ),
        (
            Method::POST,
            format!("/functions/{ALICE_FN}/deployments"),
            None,
            [
                // Allowed callers reach the upload check (the body is no
                // bundle): the refusal rows are what this row is about.
                Ok(400),
                Ok(400),
                Err(
                    "function acc-alice is owned by user alice; role developer may only deploy functions it owns",
                ),
                Err("role viewer cannot deploy functions (needs developer)"),
                Err(node_refusal),
            ],
        ),
        (
            Method::DELETE,
            format!("/functions/{ALICE_FN}"),
            None,
            [
                Ok(0), // checked last, below
                Ok(0),
                Err(
                    "function acc-alice is owned by user alice; role developer may only delete functions it owns",
                ),
                Err("role viewer cannot delete functions (needs developer)"),
                Err(node_refusal),
            ],
        ),
        (
            Method::GET,
            "/users".into(),
            None,
            admin_only("cannot manage users (needs admin)"),
        ),
        (
            Method::POST,
            "/users".into(),
            Some(json!({"username": "mallory", "password": "mallory-pass", "role": "admin"})),
            [
                Ok(201),
                Err("role developer cannot manage users"),
                Err("role developer cannot manage users"),
                Err("role viewer cannot manage users"),
                Err(node_refusal),
            ],
        ),
        (
            Method::PUT,
            "/users/vera/role".into(),
            Some(json!({"role": "admin"})),
            [
                Ok(200),
                Err("role developer cannot manage users"),
                Err("role developer cannot manage users"),
                Err("role viewer cannot manage users"),
                Err(node_refusal),
            ],
        ),
        // Mallory's (added two rows up), not alice's: a password change
        // revokes the user's logins, and alice's login calls every row.
        // Her own password: `tokens_nodes_and_logins`.
        (
            Method::PUT,
            "/users/mallory/password".into(),
            Some(json!({"new_password": "reset-by-admin"})),
            [
                Ok(204),
                Err("role developer cannot manage users"),
                Err("role developer cannot manage users"),
                Err("role viewer cannot manage users"),
                Err(node_refusal),
            ],
        ),
        (
            Method::DELETE,
            "/users/mallory".into(),
            None,
            [
                Ok(204),
                Err("role developer cannot manage users"),
                Err("role developer cannot manage users"),
                Err("role viewer cannot manage users"),
                Err(node_refusal),
            ],
        ),
        (
            Method::GET,
            "/nodes".into(),
            None,
            admin_only("cannot manage node credentials (needs admin)"),
        ),
        (
            Method::POST,
            "/nodes/edge-matrix/credential".into(),
            None,
            [
                Ok(201),
                Err("role developer cannot manage node credentials"),
                Err("role developer cannot manage node credentials"),
                Err("role viewer cannot manage node credentials"),
                Err(node_refusal),
            ],
        ),
        (
            Method::DELETE,
            "/nodes/edge-matrix".into(),
            None,
            [
                Ok(204),
                Err("role developer cannot manage node credentials"),
                Err("role developer cannot manage node credentials"),
                Err("role viewer cannot manage node credentials"),
                Err(node_refusal),
            ],
        ),
        (
            Method::GET,
            "/audit".into(),
            None,
            admin_only("cannot read the audit log (needs admin)"),
        ),
        (
            Method::GET,
            "/tokens".into(),
            None,
            [Ok(200), Ok(200), Ok(200), Ok(200), Err(node_refusal)],
        ),
        (
            Method::POST,
            "/tokens".into(),
            Some(json!({"name": "matrix", "expires": "1d"})),
            [Ok(201), Ok(201), Ok(201), Ok(201), Err(node_refusal)],
        ),
        (
            Method::DELETE,
            format!("/tokens/{victim_id}"),
            None,
            [
                Ok(0), // checked last, below
                Err("belongs to user vera; only admins revoke other users' tokens"),
                Err("belongs to user vera; only admins revoke other users' tokens"),
                Ok(0),
                Err(node_refusal),
            ],
        ),
        (
            Method::GET,
            "/whoami".into(),
            None,
            [Ok(200), Ok(200), Ok(200), Ok(200), Err(node_refusal)],
        ),
        // A function's keys, secrets and signing keys: read by every user,
        // managed by the owner or an admin.
        (
            Method::GET,
            format!("/functions/{ALICE_FN}/keys"),
            None,
            reads,
        ),
        (
            Method::POST,
            format!("/functions/{ALICE_FN}/keys"),
            Some(json!({"label": "matrix"})),
            manage(201),
        ),
        (
            Method::DELETE,
            format!("/functions/{ALICE_FN}/keys/999999"),
            None,
            manage(404),
        ),
        (
            Method::GET,
            format!("/functions/{ALICE_FN}/secrets"),
            None,
            reads,
        ),
        (
            Method::PUT,
            format!("/functions/{ALICE_FN}/secrets/MATRIX"),
            Some(json!({"value": "v"})),
            manage(204),
        ),
        (
            Method::DELETE,
            format!("/functions/{ALICE_FN}/secrets/NOPE"),
            None,
            manage(404),
        ),
        (
            Method::GET,
            format!("/functions/{ALICE_FN}/signing-keys"),
            None,
            reads,
        ),
        (
            Method::POST,
            format!("/functions/{ALICE_FN}/signing-keys"),
            Some(json!({"label": "matrix"})),
            manage(201),
        ),
        (
            Method::DELETE,
            format!("/functions/{ALICE_FN}/signing-keys/sk_0000000000000000"),
            None,
            manage(404),
        ),
        // Versions without a build: a rollback to a version that does not
        // exist (404) and an empty config change (400) reach the handler's
        // own checks only for the allowed callers.
        (
            Method::GET,
            format!("/functions/{ALICE_FN}/versions"),
            None,
            reads,
        ),
        (
            Method::POST,
            format!("/functions/{ALICE_FN}/rollback"),
            Some(json!({"to": 999})),
            manage(404),
        ),
        (
            Method::POST,
            format!("/functions/{ALICE_FN}/config"),
            Some(json!({})),
            manage(400),
        ),
        // Builds, logs, executions, stats, usage, status: reads.
        (
            Method::GET,
            format!("/functions/{ALICE_FN}/builds"),
            None,
            reads,
        ),
        (Method::GET, format!("/builds/{deployment_id}"), None, reads),
        (
            Method::GET,
            format!("/builds/{deployment_id}/log"),
            None,
            reads,
        ),
        (
            Method::GET,
            format!("/functions/{ALICE_FN}/logs"),
            None,
            reads,
        ),
        (
            Method::GET,
            format!("/functions/{ALICE_FN}/executions"),
            None,
            reads,
        ),
        (
            Method::GET,
            format!("/functions/{ALICE_FN}/stats"),
            None,
            reads,
        ),
        (
            Method::GET,
            format!("/functions/{ALICE_FN}/usage"),
            None,
            reads,
        ),
        (Method::GET, "/status".into(), None, reads),
        // What nodes post: admins and the node itself get past the role
        // check to the body's (400: the body is no batch); users are refused.
        (
            Method::POST,
            "/executions".into(),
            None,
            node_post(
                "cannot report executions and node status (node credentials and admins only)",
            ),
        ),
        (
            Method::POST,
            format!("/nodes/{stack_node}/status"),
            None,
            node_post(
                "cannot report executions and node status (node credentials and admins only)",
            ),
        ),
        (
            Method::POST,
            "/logs".into(),
            None,
            node_post("cannot ship function logs (node credentials and admins only)"),
        ),
    ];
    let mut checked = 0;
    for (method, path, body, expected) in &rows {
        for (who, expect) in callers.iter().zip(expected.iter()) {
            if *expect == Ok(0) {
                continue;
            }
            let answer = api
                .call(
                    who.label,
                    Some(who.token),
                    method.clone(),
                    path,
                    body.clone(),
                )
                .await;
            // Keep vera a viewer for every call but the role change itself.
            if path == "/users/vera/role" && answer.status == StatusCode::OK {
                let back = api
                    .call(
                        "admin",
                        Some(&admin),
                        Method::PUT,
                        "/users/vera/role",
                        Some(json!({"role": "viewer"})),
                    )
                    .await;
                assert_eq!(back.status, StatusCode::OK);
            }
            match expect {
                Ok(status) => assert_eq!(
                    answer.status.as_u16(),
                    *status,
                    "{} {method} {path}: {:?}",
                    who.label,
                    answer.body
                ),
                Err(message) => {
                    assert_eq!(
                        answer.status,
                        StatusCode::FORBIDDEN,
                        "{} {method} {path}: {:?}",
                        who.label,
                        answer.body
                    );
                    assert!(
                        answer.error().contains(message),
                        "{} {method} {path}: {:?} lacks {message:?}",
                        who.label,
                        answer.error()
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 100, "{checked} matrix cells");
    // Every route of the control plane's router has a row.
    let rows_at: Vec<(Method, &str)> = rows
        .iter()
        .map(|(m, p, _, _)| (m.clone(), p.as_str()))
        .collect();
    let missing = uncovered_routes(&rows_at);
    assert!(
        missing.is_empty(),
        "control routes without a row in the role × endpoint matrix (add one): {missing:?}"
    );
    // Nothing a refusal touched changed: the same versions, the same owner.
    assert_eq!(versions(ALICE_FN).await, Some(2));
    let f = api
        .call(
            "admin",
            Some(&admin),
            Method::GET,
            &format!("/functions/{ALICE_FN}"),
            None,
        )
        .await;
    assert_eq!(f.body["owner"], "alice");

    // Revocation, allowed: the owner's own token; then it is gone for all.
    let answer = api
        .call(
            "vera",
            Some(&vera),
            Method::DELETE,
            &format!("/tokens/{victim_id}"),
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{:?}", answer.body);
    let answer = api
        .call(
            "admin",
            Some(&admin),
            Method::DELETE,
            &format!("/tokens/{victim_id}"),
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{:?}", answer.body);

    // Deletion, allowed: the owner its own, an admin another's.
    let answer = api
        .call(
            "alice",
            Some(&alice),
            Method::DELETE,
            &format!("/functions/{ALICE_FN}"),
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{:?}", answer.body);
    let answer = api
        .call(
            "admin",
            Some(&admin),
            Method::DELETE,
            &format!("/functions/{BOB_FN}"),
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{:?}", answer.body);
    cli_ok(&stack, &admin, &["delete", ADMIN_FN], "");
    cli_mutations += 1;

    // The audit log: every mutating call made above, with its result and
    // its caller, and nothing else but the harness's node credential.
    let log = api
        .call("admin", Some(&admin), Method::GET, "/audit", None)
        .await;
    assert_eq!(log.status, StatusCode::OK);
    let entries = log.body.as_array().expect("audit rows").clone();
    let by_id: BTreeMap<&str, &Value> = entries
        .iter()
        .map(|e| (e["request_id"].as_str().unwrap_or_default(), e))
        .collect();
    let made = api.mutating.lock().unwrap().clone();
    for (id, (status, who)) in &made {
        let entry = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("call {id} by {who} ({status}) is not in the audit log"));
        assert_eq!(entry["status"], *status, "{entry}");
        if *status == 403 {
            assert!(
                entry["error"].as_str().is_some_and(|e| !e.is_empty()),
                "a refusal is recorded with its message: {entry}"
            );
        }
        assert!(entry["source"] == "127.0.0.1", "{entry}");
    }
    // The stack's own proxy may post too (a crash report, a refused batch):
    // recorded like any node's call, not made by this test. Only those
    // actions are allowed of it, and they are shown.
    let (proxy_rows, entries): (Vec<&Value>, Vec<&Value>) = entries.iter().partition(|e| {
        e["actor_kind"] == "node"
            && e["actor"] == stack.node.as_str()
            && !made.contains_key(e["request_id"].as_str().unwrap_or_default())
    });
    for row in &proxy_rows {
        eprintln!("audit row of the stack's own proxy: {row}");
        assert!(
            matches!(
                row["action"].as_str(),
                Some(
                    "crash.report"
                        | "POST /api/v1/executions"
                        | "POST /api/v1/logs"
                        | "POST /api/v1/nodes/{node}/status"
                )
            ),
            "the proxy posts nothing else: {row}"
        );
    }
    // A refused upload can be recorded twice for one CLI command: the
    // control plane answers 403 before it reads the body, the connection
    // closes under the upload, and the CLI then asks again with an empty
    // body to learn the refusal (`Client::refusal_of_upload`; seen in CI:
    // vera's refused deploy, two ids 3.5 ms apart). Such repeats of the
    // CLI's (ids not the test's) are counted once.
    let mut refused = std::collections::BTreeSet::new();
    let entries: Vec<&Value> = entries
        .into_iter()
        .filter(|e| {
            let by_test = made.contains_key(e["request_id"].as_str().unwrap_or_default());
            by_test
                || e["status"] != 403
                || refused.insert((
                    e["actor"].to_string(),
                    e["action"].to_string(),
                    e["function"].to_string(),
                    e["error"].to_string(),
                ))
        })
        .collect();
    // The harness minted the node credential (1 call); the CLI's calls carry
    // ids of their own.
    assert_eq!(
        entries.len(),
        made.len() + cli_mutations + 1,
        "every mutating call, and only those, is in the audit log; the rows: {}",
        serde_json::to_string_pretty(&entries).unwrap_or_default()
    );
    let refused_deploy = entries
        .iter()
        .find(|e| e["action"] == "deploy" && e["actor"] == "bob" && e["status"] == 403)
        .expect("bob's refused deploy is recorded");
    assert_eq!(refused_deploy["function"], ALICE_FN);
    assert_eq!(
        refused_deploy["target"],
        format!("/api/v1/functions/{ALICE_FN}/deployments")
    );
    assert_eq!(refused_deploy["role"], "developer");
    let node_rows = entries.iter().filter(|e| e["actor_kind"] == "node").count();
    assert!(node_rows >= 2, "the node's crash reports are recorded");

    // `cpub audit` filters and prints the same log.
    let out = cli_ok(
        &stack,
        &admin,
        &[
            "audit",
            "--function",
            ALICE_FN,
            "--user",
            "bob",
            "-o",
            "json",
        ],
        "",
    );
    let filtered: Vec<Value> = serde_json::from_str(&out).expect("audit json");
    assert!(!filtered.is_empty());
    assert!(
        filtered
            .iter()
            .all(|e| e["actor"] == "bob" && e["function"] == ALICE_FN),
        "{out}"
    );
    let table = cli_ok(&stack, &admin, &["audit", "--since", "1h"], "");
    assert!(
        table.contains("function.delete") && table.contains("403"),
        "{table}"
    );
    let err = cli_err(&stack, &vera, &["audit"], "");
    assert!(
        err.contains("role viewer cannot read the audit log"),
        "{err}"
    );

    // From an admin's login (a token that expires), adding a user, raising
    // a role and setting another's password need the admin's own password:
    // with --password-stdin, the line after the command's own. Lowering a
    // role needs none.
    let admin_login = api.token("admin", ADMIN_PASSWORD).await;
    let with_mine = |first: &str| format!("{first}\n{ADMIN_PASSWORD}\n");
    let role_of = |name: &str| {
        let users = cli_ok(&stack, &admin, &["user", "list", "-o", "json"], "");
        let users: Vec<Value> = serde_json::from_str(&users).unwrap();
        users
            .iter()
            .find(|u| u["username"] == name)
            .map(|u| u["role"].as_str().unwrap().to_owned())
    };
    let add_erin = [
        "user",
        "add",
        "erin",
        "--role",
        "viewer",
        "--password-stdin",
    ];
    let err = cli_err(&stack, &admin_login, &add_erin, "erin-password-1\n");
    assert!(
        err.contains("adding a user needs your own password")
            && err.contains("your own password is needed on the next line of standard input"),
        "{err}"
    );
    assert_eq!(role_of("erin"), None);
    cli_ok(
        &stack,
        &admin_login,
        &add_erin,
        &with_mine("erin-password-1"),
    );
    let raise = ["user", "set-role", "erin", "developer", "--password-stdin"];
    let err = cli_err(&stack, &admin_login, &raise, "");
    assert!(
        err.contains("raising a role needs your own password"),
        "{err}"
    );
    assert_eq!(role_of("erin").as_deref(), Some("viewer"));
    cli_ok(&stack, &admin_login, &raise, &format!("{ADMIN_PASSWORD}\n"));
    assert_eq!(role_of("erin").as_deref(), Some("developer"));
    cli_ok(
        &stack,
        &admin_login,
        &["user", "set-role", "erin", "viewer"],
        "",
    );
    assert_eq!(role_of("erin").as_deref(), Some("viewer"));
    let passwd_erin = ["user", "passwd", "erin", "--password-stdin"];
    let err = cli_err(&stack, &admin_login, &passwd_erin, "erin-password-2\n");
    assert!(
        err.contains("setting another user's password needs your own password"),
        "{err}"
    );
    cli_ok(
        &stack,
        &admin_login,
        &passwd_erin,
        &with_mine("erin-password-2"),
    );
    api.token("erin", "erin-password-2").await;
    // From a token that never expires, only the new password is read.
    cli_ok(&stack, &admin, &passwd_erin, "erin-password-3\n");
    api.token("erin", "erin-password-3").await;
    cli_ok(&stack, &admin_login, &["user", "remove", "erin"], "");
}

#[tokio::test]
async fn tokens_nodes_and_logins() {
    let stack = Stack::start(&[]).await.expect("stack");
    let admin = stack.token.clone();
    let api = Api::new(&stack);
    cli_ok(
        &stack,
        &admin,
        &[
            "user",
            "add",
            "carol",
            "--role",
            "developer",
            "--password-stdin",
        ],
        "carol-password-1\n",
    );
    // A generated password is printed once and works.
    let out = cli_ok(
        &stack,
        &admin,
        &["user", "add", "dan", "--role", "viewer"],
        "",
    );
    let dan_password = out
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("generated password printed");
    api.token("dan", dan_password).await;

    // Login through the CLI, then tokens through the CLI.
    let config = stack.dir.path().join("carol.toml");
    let out = Command::new(bin("cpub"))
        .args([
            "login",
            "--url",
            &stack.control_url(),
            "-u",
            "carol",
            "--password-stdin",
        ])
        .env("CPUB_CONFIG", &config)
        .env_remove("CPUB_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"carol-password-1\n")?;
            c.wait_with_output()
        })
        .expect("cpub login");
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("the token expires at"), "{said}");
    let carol = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("token = \"")?
                .strip_suffix('"')
                .map(str::to_owned)
        })
        .expect("stored token");
    assert_eq!(
        cli_ok(&stack, &carol, &["user", "whoami"], "").trim(),
        "carol (developer)"
    );
    // An existing token stored from standard input (not the process list),
    // checked first.
    let stored = |token: &str| {
        let config = stack.dir.path().join("carol-token.toml");
        let out = Command::new(bin("cpub"))
            .args(["login", "--url", &stack.control_url(), "--token-stdin"])
            .env("CPUB_CONFIG", &config)
            .env_remove("CPUB_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(format!("{token}\n").as_bytes())?;
                c.wait_with_output()
            })
            .expect("cpub login --token-stdin");
        (
            out.status.success(),
            std::fs::read_to_string(&config).unwrap_or_default(),
        )
    };
    let (ok, file) = stored(&carol);
    assert!(ok && file.contains(&carol), "{file}");
    let (ok, _) = stored("cpub_not-a-token");
    assert!(!ok, "a token the control plane refuses is not stored");

    let scoped = cli_ok(
        &stack,
        &carol,
        &[
            "token",
            "create",
            "--name",
            "ci",
            "--expires",
            "7d",
            "--role-scope",
            "viewer",
        ],
        "",
    )
    .trim()
    .to_owned();
    assert!(
        scoped.starts_with("cpub_") && scoped.len() == 69,
        "{scoped}"
    );
    assert!(
        cli_ok(&stack, &scoped, &["user", "whoami"], "")
            .contains("carol (developer; this token is scoped to viewer)")
    );
    cli_ok(&stack, &scoped, &["list"], "");
    let dir = bundle("hello", "acc-scoped", "");
    let err = cli_err(
        &stack,
        &scoped,
        &["deploy", dir.path().to_str().unwrap()],
        "",
    );
    assert!(
        err.contains("this token is scoped to viewer; user carol is developer"),
        "{err}"
    );
    let err = cli_err(
        &stack,
        &carol,
        &["token", "create", "--role-scope", "admin"],
        "",
    );
    assert!(err.contains("can only narrow"), "{err}");
    // A narrowed token mints nothing wider than itself, nor anything that
    // outlives it (it expires in 7 days; carol's login itself in 30, so
    // it could not ask for more).
    let err = cli_err(
        &stack,
        &scoped,
        &["token", "create", "--name", "forever"],
        "",
    );
    assert!(err.contains("expires"), "{err}");
    let minted = cli_ok(
        &stack,
        &scoped,
        &["token", "create", "--name", "child", "--expires", "1d"],
        "",
    );
    assert!(cli_ok(&stack, minted.trim(), &["user", "whoami"], "").contains("scoped to viewer"));
    let err = cli_err(
        &stack,
        &carol,
        &["token", "create", "--expires", "soon"],
        "",
    );
    assert!(err.contains("--expires"), "{err}");
    // A token that outlives her login: her password lifts the bound (read
    // from standard input here; on a terminal the CLI asks for it). A
    // wrong one is refused.
    let err = cli_err(&stack, &carol, &["token", "create", "--name", "bot"], "");
    assert!(
        err.contains("cannot outlive") && err.contains("your password"),
        "{err}"
    );
    let err = cli_err(
        &stack,
        &carol,
        &["token", "create", "--name", "bot", "--password-stdin"],
        "not-her-password\n",
    );
    assert!(err.contains("the current password is wrong"), "{err}");
    let bot = cli_ok(
        &stack,
        &carol,
        &["token", "create", "--name", "bot", "--password-stdin"],
        "carol-password-1\n",
    );
    assert!(
        cli_ok(&stack, bot.trim(), &["user", "whoami"], "").contains("carol (developer)"),
        "{bot}"
    );
    let listed = cli_ok(&stack, &carol, &["token", "list", "-o", "json"], "");
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let bot_row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "bot")
        .unwrap_or_else(|| panic!("no token bot: {listed}"));
    assert!(bot_row["expires_at"].is_null(), "{bot_row}");

    // The list: names, dates, last use; never a token.
    let listed = cli_ok(&stack, &carol, &["token", "list", "-o", "json"], "");
    assert!(!listed.contains(&scoped) && !listed.contains(&carol));
    let tokens: Vec<Value> = serde_json::from_str(&listed).unwrap();
    let ci = tokens.iter().find(|t| t["name"] == "ci").expect("ci token");
    assert_eq!(ci["role_scope"], "viewer");
    assert!(
        ci["expires_at"].is_string() && ci["last_used_at"].is_string(),
        "{ci}"
    );
    let table = cli_ok(&stack, &carol, &["token", "list"], "");
    assert!(table.contains("ci") && table.contains("(this)"), "{table}");
    let err = cli_err(&stack, &carol, &["token", "list", "--all"], "");
    assert!(err.contains("role developer cannot manage users"), "{err}");
    assert!(cli_ok(&stack, &admin, &["token", "list", "--all"], "").contains("carol"));

    // Revocation: the next call is refused.
    let id = ci["id"].as_i64().unwrap().to_string();
    let err = cli_err(&stack, &stack.token, &["token", "revoke", "999999"], "");
    assert!(err.contains("no token 999999"), "{err}");
    let dan = api.token("dan", dan_password).await;
    let err = cli_err(&stack, &dan, &["token", "revoke", &id], "");
    assert!(
        err.contains(&format!("token {id} belongs to user carol")),
        "{err}"
    );
    cli_ok(&stack, &carol, &["token", "revoke", &id], "");
    let err = cli_err(&stack, &scoped, &["list"], "");
    assert!(err.contains("invalid or revoked API token"), "{err}");

    // Expiry: refused with a message naming the token.
    let short = cli_ok(
        &stack,
        &carol,
        &["token", "create", "--name", "brief", "--expires", "1s"],
        "",
    );
    let short = short.trim().to_owned();
    let message =
        eventually(Duration::from_secs(10), "the token expires", || {
            let out = cli(&stack, &short, &["list"], "");
            async move {
                (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
            }
        })
        .await;
    assert!(
        message.contains("API token \"brief\" of user carol expired at"),
        "{message}"
    );

    // Node credentials: only the route watch and crash reports, own node.
    let edge = cli_ok(&stack, &admin, &["node-token", "create", "edge-7"], "")
        .trim()
        .to_owned();
    assert!(edge.starts_with("cpubnode_"), "{edge}");
    let err = cli_err(&stack, &admin, &["node-token", "create", "edge-7"], "");
    assert!(
        err.contains("already has a credential") && err.contains("--replace"),
        "{err}"
    );
    let err = cli_err(&stack, &edge, &["list"], "");
    assert!(
        err.contains("a node credential (node edge-7) cannot read functions"),
        "{err}"
    );
    let watch = api
        .call(
            "edge-7",
            Some(&edge),
            Method::GET,
            "/routes?node=edge-7",
            None,
        )
        .await;
    assert_eq!(watch.status, StatusCode::OK);
    let listed = cli_ok(&stack, &admin, &["node-token", "list"], "");
    assert!(
        listed.contains("edge-7") && !listed.contains(&edge),
        "{listed}"
    );
    let err = cli_err(&stack, &carol, &["node-token", "create", "edge-8"], "");
    assert!(
        err.contains("role developer cannot manage node credentials"),
        "{err}"
    );
    cli_ok(&stack, &admin, &["node-token", "revoke", "edge-7"], "");
    let watch = api
        .call(
            "edge-7",
            Some(&edge),
            Method::GET,
            "/routes?node=edge-7",
            None,
        )
        .await;
    assert_eq!(watch.status, StatusCode::UNAUTHORIZED);
    // The stack's own proxy follows the routes with its node credential.
    let nodes = cli_ok(&stack, &admin, &["node-token", "list", "-o", "json"], "");
    let nodes: Vec<Value> = serde_json::from_str(&nodes).unwrap();
    let own = nodes
        .iter()
        .find(|n| n["node"] == stack.node.as_str())
        .expect("the stack's node");
    assert!(own["last_used_at"].is_string(), "the proxy used it: {own}");

    // A role change applies on the next call; so does a removal.
    cli_ok(&stack, &admin, &["user", "set-role", "carol", "viewer"], "");
    let err = cli_err(&stack, &carol, &["delete", "whatever"], "");
    assert!(err.contains("role viewer cannot delete functions"), "{err}");
    assert_eq!(
        cli_ok(&stack, &carol, &["user", "whoami"], "").trim(),
        "carol (viewer)"
    );

    // Own password: needs the current one; the change ends her other
    // logins, not the one that made it.
    let other_login = api.token("carol", "carol-password-1").await;
    let err = cli_err(
        &stack,
        &carol,
        &["user", "passwd", "--password-stdin"],
        "wrong-password\ncarol-password-2\n",
    );
    assert!(err.contains("the current password is wrong"), "{err}");
    cli_ok(
        &stack,
        &carol,
        &["user", "passwd", "--password-stdin"],
        "carol-password-1\ncarol-password-2\n",
    );
    assert_eq!(
        api.login("carol", "carol-password-1").await.status,
        StatusCode::UNAUTHORIZED
    );
    let answer = api
        .call("carol", Some(&other_login), Method::GET, "/functions", None)
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{:?}", answer.body);
    assert_eq!(
        cli_ok(&stack, &carol, &["user", "whoami"], "").trim(),
        "carol (viewer)"
    );
    let carol2 = api.token("carol", "carol-password-2").await;

    // The last admin can be neither demoted nor removed.
    let err = cli_err(
        &stack,
        &admin,
        &["user", "set-role", "admin", "developer"],
        "",
    );
    assert!(err.contains("user admin is the last admin"), "{err}");
    let err = cli_err(&stack, &admin, &["user", "remove", "admin"], "");
    assert!(err.contains("last admin"), "{err}");
    let users = cli_ok(&stack, &admin, &["user", "list"], "");
    assert!(
        users.contains("carol") && users.contains("viewer"),
        "{users}"
    );
    cli_ok(&stack, &admin, &["user", "remove", "carol"], "");
    let answer = api
        .call("carol", Some(&carol2), Method::GET, "/functions", None)
        .await;
    assert_eq!(
        answer.status,
        StatusCode::UNAUTHORIZED,
        "her tokens went with her"
    );

    // Login limits: 5 failures per user, then 429 with retry-after.
    for _ in 0..5 {
        assert_eq!(
            api.login("dan", "nope-nope").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let limited = api.login("dan", dan_password).await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        limited.body
    );
    let wait = limited.retry_after.expect("retry-after");
    assert!((250..=300).contains(&wait), "{wait}");
    assert!(
        limited.error().contains("too many login attempts"),
        "{:?}",
        limited.body
    );
    // 20 attempts a minute per address (a fixed window from its first
    // attempt), counted when they arrive: 25 at once (new names, so the
    // per-user limit stays out of the way) cannot all be let in. At once,
    // because a login in a debug build takes seconds (argon2).
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..25 {
        let http = api.http.clone();
        let url = format!("{}/api/v1/auth/login", api.base);
        calls.spawn(async move {
            let r = http
                .post(url)
                .json(&json!({"username": format!("nobody-{i}"), "password": "whatever-1"}))
                .send()
                .await
                .expect("login answers");
            let retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            (r.status(), retry_after, r.text().await.unwrap_or_default())
        });
    }
    let answers = calls.join_all().await;
    let let_in = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::UNAUTHORIZED)
        .count();
    let limited: Vec<_> = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(let_in + limited.len(), 25, "{answers:?}");
    assert!(let_in <= 20 && limited.len() >= 5, "{let_in} let in of 25");
    for (_, retry_after, body) in limited {
        assert!(body.contains("127.0.0.1"), "{body}");
        let wait = retry_after.expect("retry-after");
        assert!((1..=60).contains(&wait), "{wait}");
    }

    // The audit log: logins and refusals recorded; it cannot be changed.
    let log = api
        .call("admin", Some(&admin), Method::GET, "/audit?user=dan", None)
        .await;
    let rows = log.body.as_array().expect("rows");
    assert!(
        rows.iter()
            .any(|e| e["action"] == "login" && e["status"] == 429)
    );
    assert!(
        rows.iter()
            .any(|e| e["action"] == "login" && e["status"] == 401)
    );
    assert!(
        rows.iter()
            .any(|e| e["action"] == "token.revoke" && e["status"] == 403)
    );
    let db = stack.db().await;
    for sql in [
        "UPDATE audit_log SET status = 200",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let err = sqlx::query(sql)
            .execute(&db)
            .await
            .expect_err("the audit log is append-only");
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    db.close().await;
}
