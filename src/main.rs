//! The `canaryd` binary: argument parsing, logging and exit codes. Everything else lives in
//! the library so tests drive the same code.

use anyhow::Context;
use canaryd::config::Config;
use canaryd::server::Server;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc, not glibc's malloc: each HTTP/2 connection holds up to a hundred streams'
/// request futures of ~3 KiB, past glibc's per-thread cache, and glibc served them from its
/// shared bins (docs/performance.md, ninth step). Built without transparent huge pages, so a
/// sidecar's resident memory is what it touches.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gives the free pages of this thread's heap back to the system: the allocator keeps what a
/// burst of connections freed (their buffers) for a while, returning it only as the thread
/// allocates again, and an idle worker does not. Called by each worker's parking lot once a
/// burst of connections has gone idle (see `server::park`).
fn release_heap() {
    // SAFETY: mi_collect only walks the calling thread's own heap and the process's free
    // pages, under mimalloc's own synchronisation; it takes no pointers from us.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

#[derive(Parser)]
#[command(
    name = "canaryd",
    version,
    about = "Traffic-splitting reverse proxy for progressive delivery"
)]
struct Cli {
    /// Log format on stderr: `text` for people, `json` (one JSON object per line) for
    /// log pipelines. Access-log events (proxy.access_log) use the same format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "CANARYD_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// How the worker threads share the work.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RuntimeFlavor {
    /// One multi-threaded runtime: every thread accepts, any thread may run any connection.
    Shared,
    /// One single-threaded runtime per worker, each with its own `SO_REUSEPORT` listener
    /// sockets and upstream connections: nothing crosses threads on the request path.
    PerCore,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Config file (YAML). Required unless `--kubernetes`.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Also take routes from the cluster: the Gateway API objects of GatewayClasses whose
        /// controllerName is `canaryd.io/gateway-controller` (in-cluster service account,
        /// else KUBECONFIG). Needs a build with the `kubernetes` feature.
        #[arg(long)]
        kubernetes: bool,
        /// With `--kubernetes`: the Ingress class canaryd serves.
        #[arg(long, default_value = "canaryd")]
        ingress_class: String,
        /// Worker threads; 0 = one per CPU core. 1 runs a single-threaded runtime (no
        /// cross-thread hand-offs), the fastest choice when canaryd is pinned to one core.
        /// With more, see `--runtime`.
        #[arg(long, default_value_t = 0, env = "CANARYD_WORKERS")]
        workers: usize,
        /// How workers share the work (with more than one worker). `per-core` measured 1.44x
        /// the requests per second of `shared` on 2 cores (docs/performance.md).
        #[arg(long, value_enum, default_value = "per-core", env = "CANARYD_RUNTIME")]
        runtime: RuntimeFlavor,
    },
    /// Run the fleet controller: one rollout for every canaryd replica the file's `controller:`
    /// section names (analysis summed over all of them, every step pushed to each and
    /// verified), with its own admin API, CLI and events.
    Controller {
        /// Controller file (YAML): `controller:`, `admin:` and routes with `rollout` blocks.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a config file, like `nginx -t`: exit 0 with a summary or 1 with every error.
    /// A Kubernetes manifest is accepted too: every canaryd config in its ConfigMaps is checked.
    Check {
        file: PathBuf,
        /// Do not read the TLS certificate, key and CA files the config names (for checking a
        /// config on a machine that does not have them).
        #[arg(long)]
        skip_files: bool,
        /// The file is for `canaryd run --kubernetes`: it may have no routes of its own.
        #[arg(long)]
        kubernetes: bool,
    },
    /// Exit 0 if URL answers 2xx within 3 s (container HEALTHCHECK without curl).
    Probe { url: String },
    /// Run one demo backend that answers `<name>` (for local demos and tests). Its fault knob
    /// can also be turned at run time: `PUT /fault?error_rate=0.3&latency_ms=100`.
    Backend {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Share of requests answered 500, 0.0 to 1.0.
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Added to every answer, e.g. `100ms`.
        #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
        latency: std::time::Duration,
    },
    /// Start two demo backends, the proxy on built-in defaults and a real rollout of the
    /// canary (10 % -> 30 % -> 60 % -> 100 %) judged from built-in traffic.
    Demo {
        /// Proxy listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin listener (API, metrics, event stream).
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Worker threads; 0 = one per CPU core.
        #[arg(long, default_value_t = 0)]
        workers: usize,
    },
    /// Show which route and version a request would get, and why.
    Route {
        file: PathBuf,
        #[arg(long, default_value = "GET")]
        method: String,
        /// Full URL, e.g. http://shop.example.com/cart
        #[arg(long)]
        url: String,
        /// Request header `name:value` (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// Cookie `name=value` (repeatable).
        #[arg(long = "cookie")]
        cookies: Vec<String>,
        /// Address the request comes from (the TCP peer), for `client_ip` rules; without it
        /// those rules do not match.
        #[arg(long)]
        client_ip: Option<String>,
    },
    /// Drive and watch a route's rollout through the admin API (`get`, `promote`, `abort`,
    /// `retry`, `pause`, `resume`, `status --wait` for CI), or `plan` a config's rollouts.
    Rollout {
        #[command(subcommand)]
        command: canaryd::rollout::cli::RolloutCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    canaryd::server::set_heap_release(release_heap);
    match cli.command {
        Command::Check {
            file,
            skip_files,
            kubernetes,
        } => check(&file, skip_files, kubernetes),
        Command::Rollout { command } => canaryd::rollout::cli::run(command),
        Command::Probe { url } => probe(&url),
        Command::Backend {
            name,
            listen,
            error_rate,
            latency,
        } => {
            if !(0.0..=1.0).contains(&error_rate) {
                eprintln!("--error-rate must be from 0.0 to 1.0 (got {error_rate})");
                return ExitCode::FAILURE;
            }
            let fault = canaryd::demo::Fault {
                error_rate,
                latency,
            };
            serve(cli.log_format, 1, RuntimeFlavor::Shared, |_| async move {
                // Leaked once: the name lives as long as the process.
                let name = Box::leak(name.into_boxed_str());
                let addr = canaryd::demo::start_backend_on(name, listen, fault).await?;
                println!("backend listening on {addr}");
                shutdown_signal().await;
                Ok(())
            })
        }
        Command::Route {
            file,
            method,
            url,
            headers,
            cookies,
            client_ip,
        } => {
            let cfg = match Config::from_file(&file) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: invalid config:\n{e}", file.display());
                    return ExitCode::FAILURE;
                }
            };
            match canaryd::cli::explain(
                &cfg,
                &method,
                &url,
                &headers,
                &cookies,
                client_ip.as_deref(),
            ) {
                Ok(s) => {
                    print!("{s}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            config,
            kubernetes,
            ingress_class,
            workers,
            runtime,
        } => serve(cli.log_format, workers, runtime, |per_core| async move {
            if kubernetes {
                return run_kubernetes(config, ingress_class, per_core).await;
            }
            let Some(config) = config else {
                anyhow::bail!("canaryd run needs --config FILE (or --kubernetes)");
            };
            let server = Server::bind_file_per_core(&config, per_core).await?;
            server.run(shutdown_signal()).await
        }),
        Command::Controller { config } => {
            serve(cli.log_format, 1, RuntimeFlavor::Shared, |_| async move {
                let server = Server::bind_controller(&config).await?;
                server.run(shutdown_signal()).await
            })
        }
        Command::Demo {
            listen,
            admin,
            workers,
        } => serve(cli.log_format, workers, RuntimeFlavor::Shared, |_| {
            canaryd::demo::run(listen, admin, shutdown_signal())
        }),
    }
}

/// `canaryd run --kubernetes`: connect first (a cluster that cannot be reached is an error at
/// startup, not a proxy that silently serves nothing), then bind and watch.
#[cfg(feature = "kubernetes")]
async fn run_kubernetes(
    config: Option<PathBuf>,
    ingress_class: String,
    per_core: usize,
) -> anyhow::Result<()> {
    let client = canaryd::k8s::watch::connect().await?;
    let server = Server::bind_kubernetes(config.as_deref(), per_core).await?;
    let watcher = tokio::spawn(canaryd::k8s::watch::run(
        server.control(),
        client,
        canaryd::k8s::watch::Options { ingress_class },
    ));
    let result = server.run(shutdown_signal()).await;
    watcher.abort();
    result
}

#[cfg(not(feature = "kubernetes"))]
async fn run_kubernetes(
    _config: Option<PathBuf>,
    _ingress_class: String,
    _per_core: usize,
) -> anyhow::Result<()> {
    anyhow::bail!(
        "--kubernetes: this canaryd was built without the `kubernetes` feature; build it with `cargo build --release --features kubernetes` (the container image has it)"
    )
}

fn check(file: &std::path::Path, skip_files: bool, kubernetes: bool) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "{}: 1 error(s)\n  {}: cannot read config file: {e}",
                file.display(),
                file.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let found = canaryd::cli::find_configs(&file.display().to_string(), &text);
    if found.is_empty() {
        eprintln!(
            "{}: a Kubernetes manifest with no canaryd config in its ConfigMaps",
            file.display()
        );
        return ExitCode::FAILURE;
    }
    let mut ok = true;
    for f in found {
        let result = Config::from_yaml_with(&f.text, kubernetes).and_then(|cfg| {
            if !skip_files {
                canaryd::cli::check_files(&cfg)?;
            }
            Ok(cfg)
        });
        match result {
            Ok(cfg) => print!("{}", canaryd::cli::check_summary(&f.source, &cfg)),
            Err(e) => {
                ok = false;
                eprintln!("{}: {} error(s)", f.source, e.errors.len());
                for err in &e.errors {
                    eprintln!("  {err}");
                }
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn probe(url: &str) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(canaryd::cli::probe(url, std::time::Duration::from_secs(3))));
    match result {
        Ok(status) if status.is_success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("{url}: {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Set up logging and the runtime, run `f` (given the number of per-core workers, 1 when the
/// runtime is shared), map its error to exit code 1.
fn serve<F, Fut>(format: LogFormat, workers: usize, flavor: RuntimeFlavor, f: F) -> ExitCode
where
    F: FnOnce(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let filter = tracing_subscriber::EnvFilter::try_from_env("CANARYD_LOG")
        .unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    let workers = match workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let per_core = if flavor == RuntimeFlavor::PerCore {
        workers
    } else {
        1
    };
    // This thread's runtime is the whole server, or per-core worker 0.
    let mut builder = if workers == 1 || per_core > 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    tracing::info!(
        workers,
        runtime = if per_core > 1 { "per-core" } else { "shared" },
        "starting runtime"
    );
    let result = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(f(per_core)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("canaryd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGTERM/SIGINT; a second one exits at once, without draining.
async fn shutdown_signal() {
    wait_for_signal().await;
    tracing::info!("draining; send the signal again to exit at once");
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("canaryd: second signal, exiting without draining");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
