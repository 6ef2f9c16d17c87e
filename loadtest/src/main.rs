//! `cpub-loadtest`: parse the command line or a scenario file into a plan,
//! run it, print the table or JSON, exit non-zero past `--max-errors`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use containerpub_loadtest::scenario::{Overrides, Scenario, read_body};
use containerpub_loadtest::{
    AllowList, Error, Mode, Plan, Report, RequestSpec, Target, TargetSet, generated_body,
    parse_duration,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// Exit code when the run had more errors than `--max-errors`.
const EXIT_ERRORS: u8 = 1;
/// Exit code on bad configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// Load generator for ContainerPub: closed or open loop against loopback targets.
///
/// Ad hoc:   cpub-loadtest http://127.0.0.1:8080/fn/hello/ -c 32 -d 10s
/// Open:     cpub-loadtest http://127.0.0.1:8080/fn/hello/ -r 500 -d 30s
/// Zipf:     cpub-loadtest 'http://127.0.0.1:8080/fn/f{i}/' --zipf-functions 300 -r 300
/// Scenario: cpub-loadtest run loadtest/scenarios/warm-steady.toml --json
#[derive(Debug, Parser)]
#[command(
    name = "cpub-loadtest",
    version,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    adhoc: AdHoc,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario file (loadtest/scenarios/*.toml).
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The scenario file.
    scenario: PathBuf,
    /// Replace the scenario's base, e.g. http://127.0.0.1:18080.
    #[arg(long, value_name = "URL")]
    target_base: Option<String>,
    /// Replace the scenario's duration (and drop its request count).
    #[arg(short, long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Replace the scenario's request count.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct AdHoc {
    /// Target URL(s), http only; several are loaded with equal weight. With
    /// --zipf-functions, one pattern containing {i}.
    #[arg(value_name = "URL")]
    urls: Vec<String>,
    /// Connections (closed loop: concurrency; open loop: cap on concurrency).
    #[arg(short, long, default_value_t = 32)]
    connections: usize,
    /// Open loop at this many requests per second (default: closed loop).
    #[arg(short, long)]
    rate: Option<f64>,
    /// Run length (e.g. 10s, 2m); default 10s when --requests is not given either.
    #[arg(short, long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many requests.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Load this long before measuring.
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// Per-request timeout.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    timeout: Duration,
    /// HTTP method.
    #[arg(short, long, default_value = "GET")]
    method: String,
    /// Extra header "Name: value" (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Inline request body.
    #[arg(long, conflicts_with_all = ["body_bytes", "body_file"])]
    body: Option<String>,
    /// Generated request body of this many bytes.
    #[arg(long, conflicts_with = "body_file")]
    body_bytes: Option<u64>,
    /// Request body read from a file.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Expand the URL pattern's {i} to 0..N and pick with a Zipf distribution.
    #[arg(long, value_name = "N")]
    zipf_functions: Option<usize>,
    /// Zipf exponent s (rank k has weight 1/(k+1)^s).
    #[arg(long, default_value_t = 1.0, value_name = "S")]
    zipf_exponent: f64,
    /// Seed of the target choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct Common {
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Print a progress line on stderr every second even when it is not a terminal.
    #[arg(long)]
    progress: bool,
    /// Exit with 1 when the run has more errors than this.
    #[arg(long, default_value_t = 0, value_name = "N")]
    max_errors: u64,
    /// Also allow this private address as a target (e.g. a container on the
    /// Podman bridge, 10.89.0.5); repeatable.
    #[arg(long, value_name = "ADDR")]
    allow_host: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (plan, common) = match build(cli) {
        Ok(built) => built,
        Err(e) => {
            eprintln!("cpub-loadtest: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // One connection per worker, and in open loop a timerfd per worker too.
    let needed = match plan.mode {
        Mode::Closed => plan.connections,
        Mode::Open { .. } => 2 * plan.connections,
    } as u64
        + 64;
    let limit = raise_open_files_limit();
    if limit.is_some_and(|l| l < needed) {
        eprintln!(
            "cpub-loadtest: warning: {} connections need about {needed} open files; the limit is {} \
             (raise it with `ulimit -n`)",
            plan.connections,
            limit.unwrap_or_default()
        );
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cpub-loadtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(containerpub_loadtest::run(plan));
    print(&report, common.json);
    if report.errors.total > common.max_errors {
        eprintln!(
            "cpub-loadtest: {} errors, more than --max-errors {}",
            report.errors.total, common.max_errors
        );
        return ExitCode::from(EXIT_ERRORS);
    }
    ExitCode::SUCCESS
}

/// Raises this process's soft open-files limit to its hard limit (Rust's
/// runtime leaves it at the shell's, often 1024) and returns the soft
/// limit in force; `None` when unlimited.
fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum;
        }
    }
    limit.current
}

fn print(report: &Report, json: bool) {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("cpub-loadtest: cannot encode the report: {e}"),
        }
    } else {
        print!("{}", report.table());
    }
}

fn build(cli: Cli) -> Result<(Plan, Common), Error> {
    let (mut plan, common) = match cli.command {
        Some(Command::Run(args)) => {
            let allow = AllowList::new(&args.common.allow_host)?;
            let scenario = Scenario::load(&args.scenario)?;
            let plan = scenario.plan(&Overrides {
                target_base: args.target_base,
                duration: args.duration,
                requests: args.requests,
                allow,
            })?;
            (plan, args.common)
        }
        None => {
            let adhoc = cli.adhoc;
            (adhoc_plan(&adhoc)?, adhoc.common)
        }
    };
    plan.progress = common.progress || std::io::stderr().is_terminal();
    Ok((plan, common))
}

fn adhoc_plan(a: &AdHoc) -> Result<Plan, Error> {
    let allow = AllowList::new(&a.common.allow_host)?;
    let targets = match (a.zipf_functions, a.urls.as_slice()) {
        (_, []) => {
            return Err(Error::Invalid {
                field: "URL".into(),
                reason: "give a target URL, or `run SCENARIO` (see --help)".into(),
            });
        }
        (Some(n), [pattern]) => TargetSet::zipf(pattern, n, a.zipf_exponent, &allow)?,
        (Some(_), _) => {
            return Err(Error::Invalid {
                field: "--zipf-functions".into(),
                reason: "takes exactly one URL pattern with {i}".into(),
            });
        }
        (None, urls) => TargetSet::weighted(
            urls.iter()
                .map(|u| Ok((Target::parse("URL", u, &allow)?, 1.0)))
                .collect::<Result<_, Error>>()?,
        )?,
    };
    let mut plan = Plan::new(targets);
    plan.mode = a.rate.map_or(Mode::Closed, |rate| Mode::Open { rate });
    plan.connections = a.connections;
    plan.duration = a.duration;
    plan.requests = a.requests;
    plan.warmup = a.warmup;
    plan.timeout = a.timeout;
    plan.seed = a.seed;
    plan.request = request_spec(a)?;
    plan.validate().map_err(|e| match e {
        Error::Invalid { field, reason } => Error::Invalid {
            field: format!("--{field}"),
            reason,
        },
        other => other,
    })?;
    Ok(plan)
}

fn request_spec(a: &AdHoc) -> Result<RequestSpec, Error> {
    let invalid = |field: &str, reason: String| Error::Invalid {
        field: field.into(),
        reason,
    };
    let method = Method::from_bytes(a.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| invalid("--method", format!("{:?} is not an HTTP method", a.method)))?;
    let mut headers = HeaderMap::new();
    for h in &a.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| invalid("--header", format!("{h:?} is not NAME: VALUE")))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| invalid("--header", format!("{name:?} is not a header name")))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| invalid("--header", format!("{value:?} is not a header value")))?;
        headers.append(name, value);
    }
    let body = if let Some(text) = &a.body {
        text.clone().into()
    } else if let Some(n) = a.body_bytes {
        generated_body(n).map_err(|e| invalid("--body-bytes", e.to_string()))?
    } else if let Some(path) = &a.body_file {
        read_body("--body-file", path)?
    } else {
        Default::default()
    };
    Ok(RequestSpec {
        method,
        headers,
        body,
    })
}
