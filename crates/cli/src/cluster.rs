//! `sluice scheduler` and `sluice executor`: a Ballista 55 cluster that runs Sluice's
//! plans (cargo feature `ballista`).
//!
//! Both embed Ballista's own scheduler and executor, with Sluice's codecs (task
//! boundaries cross to the executors) and Sluice's object stores: `s3://` and
//! `http(s)://` URLs get stores built from the same AWS environment variables as a
//! local session, since stores registered on a client do not travel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ballista_core::extension::SessionConfigExt;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::{SchedulerConfig, TaskDistributionPolicy};
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use clap::Args;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use sluice_core::cluster::{LogicalCodec, PhysicalCodec, accepting_store_settings, cluster_config};

/// `sluice scheduler`.
#[derive(Debug, Args)]
pub(crate) struct SchedulerArgs {
    /// Where to listen for clients (`df://HOST:PORT`) and executors.
    #[arg(long, default_value = "127.0.0.1:50050")]
    bind: SocketAddr,
    /// The host executors and clients reach this scheduler at; default: the bind
    /// address's host (127.0.0.1 when it binds every interface).
    #[arg(long)]
    external_host: Option<String>,
    /// Seconds without a heartbeat after which an executor is taken for dead and the
    /// tasks it ran are run again elsewhere.
    #[arg(long, default_value_t = 20)]
    executor_timeout: u64,
    /// Seconds a running job may wait while no executor is registered before it fails.
    #[arg(long, default_value_t = 10)]
    no_executor_timeout: u64,
    /// How tasks go to executors: `round-robin` (one task per executor in turn, so
    /// every executor writes a share) or `bias` (fill one executor's slots first,
    /// Ballista's default).
    #[arg(long, value_enum, default_value_t = TaskDistribution::RoundRobin)]
    task_distribution: TaskDistribution,
}

/// `sluice scheduler --task-distribution`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TaskDistribution {
    RoundRobin,
    Bias,
}

/// `sluice executor`.
#[derive(Debug, Args)]
pub(crate) struct ExecutorArgs {
    /// The scheduler to register with (`HOST:PORT`).
    #[arg(long)]
    scheduler: String,
    /// Where to serve shuffle and result data (Arrow Flight); the executor's gRPC
    /// service listens on the next port unless `--grpc-port` says otherwise.
    #[arg(long, default_value = "127.0.0.1:50051")]
    bind: SocketAddr,
    /// The executor's gRPC port (the scheduler pushes tasks there).
    #[arg(long)]
    grpc_port: Option<u16>,
    /// Tasks run at once; default: the number of cores.
    #[arg(long)]
    slots: Option<usize>,
    /// Where shuffle files are kept; default: a new temporary directory.
    #[arg(long)]
    work_dir: Option<std::path::PathBuf>,
    /// Seconds between heartbeats to the scheduler.
    #[arg(long, default_value_t = 3)]
    heartbeat_interval: u64,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start a runtime")
}

/// The configuration a scheduler and executors start sessions from.
fn base_config() -> SessionConfig {
    accepting_store_settings(cluster_config(SessionConfig::new_with_ballista()))
        .with_ballista_logical_extension_codec(Arc::new(LogicalCodec::default()))
        .with_ballista_physical_extension_codec(Arc::new(PhysicalCodec::default()))
}

pub(crate) fn scheduler(args: SchedulerArgs) -> anyhow::Result<()> {
    let external_host = args.external_host.clone().unwrap_or_else(|| {
        if args.bind.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            args.bind.ip().to_string()
        }
    });
    let config = SchedulerConfig {
        bind_host: args.bind.ip().to_string(),
        bind_port: args.bind.port(),
        external_host,
        executor_timeout_seconds: args.executor_timeout,
        expire_dead_executor_interval_seconds: (args.executor_timeout / 4).clamp(1, 15),
        no_executors_grace_period_seconds: args.no_executor_timeout,
        task_distribution: match args.task_distribution {
            TaskDistribution::RoundRobin => TaskDistributionPolicy::RoundRobin,
            TaskDistribution::Bias => TaskDistributionPolicy::Bias,
        },
        override_config_producer: Some(Arc::new(base_config)),
        override_session_builder: Some(Arc::new(sluice_core::cluster::scheduler_state)),
        override_logical_codec: Some(Arc::new(LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(PhysicalCodec::default())),
        ..SchedulerConfig::default()
    };
    let config = Arc::new(config);
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.bind)
            .await
            .with_context(|| format!("cannot listen at {}", args.bind))?;
        let cluster = BallistaCluster::new_from_config(&config)
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the scheduler: {e}"))?;
        let scheduler = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(
            cluster,
            Arc::clone(&config),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the scheduler: {e}"))?;
        tracing::info!(bind = %args.bind, "sluice scheduler listening (Ballista {})", ballista_core::BALLISTA_VERSION);
        tokio::spawn(fail_jobs_without_executors(
            scheduler.clone(),
            Duration::from_secs(args.no_executor_timeout),
        ));
        start_grpc_service_with_listener(listener, scheduler)
            .await
            .map_err(|e| anyhow::anyhow!("the scheduler stopped: {e}"))
    })
}

/// A Ballista scheduler keeps a job that no executor takes waiting forever. Cancel the
/// jobs of a cluster that has had no executor for `limit` (the client, which did not
/// cancel them, says why).
async fn fail_jobs_without_executors(
    scheduler: ballista_scheduler::scheduler_server::SchedulerServer<
        LogicalPlanNode,
        PhysicalPlanNode,
    >,
    limit: Duration,
) {
    let mut empty_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !scheduler.is_ready() {
            let since = *empty_since.get_or_insert_with(Instant::now);
            if since.elapsed() < limit {
                continue;
            }
            let jobs: Vec<_> = scheduler
                .state
                .task_manager
                .get_running_job_cache()
                .keys()
                .cloned()
                .collect();
            for job in jobs {
                tracing::warn!(
                    %job,
                    "cancelling a job: no executor has been registered with this scheduler for {}s; \
                     start one with `sluice executor --scheduler {}:{}`",
                    since.elapsed().as_secs(),
                    scheduler.state.config.external_host,
                    scheduler.state.config.bind_port
                );
                if let Err(e) = scheduler.cancel_job(job.clone()).await {
                    tracing::warn!(%job, error = %e, "could not cancel the job");
                }
            }
        } else {
            empty_since = None;
        }
    }
}

pub(crate) fn executor(args: ExecutorArgs) -> anyhow::Result<()> {
    let (scheduler_host, scheduler_port) = args
        .scheduler
        .trim_start_matches("df://")
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host.to_string(), port.parse::<u16>().ok()?)))
        .with_context(|| {
            format!(
                "--scheduler {:?} is not HOST:PORT (the scheduler's --bind address)",
                args.scheduler
            )
        })?;
    let grpc_port = args.grpc_port.unwrap_or(args.bind.port().wrapping_add(1));
    let config = ExecutorProcessConfig {
        bind_host: args.bind.ip().to_string(),
        external_host: (!args.bind.ip().is_unspecified()).then(|| args.bind.ip().to_string()),
        port: args.bind.port(),
        grpc_port,
        scheduler_host,
        scheduler_port,
        scheduler_connect_timeout_seconds: 10,
        vcores: args.slots.unwrap_or(0),
        work_dir: args.work_dir.map(|p| p.display().to_string()),
        executor_heartbeat_interval_seconds: args.heartbeat_interval.max(1),
        print_thread_info: false,
        override_runtime_producer: Some(Arc::new(|config: &SessionConfig| {
            sluice_core::cluster::runtime_env(config)
        })),
        override_config_producer: Some(Arc::new(base_config)),
        override_logical_codec: Some(Arc::new(LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(PhysicalCodec::default())),
        ..ExecutorProcessConfig::default()
    };
    // Run records name the executor that wrote each part by the address it serves at
    // (its host name when it listens on every interface).
    let address = if args.bind.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| args.bind.ip().to_string());
        format!("{host}:{}", args.bind.port())
    } else {
        args.bind.to_string()
    };
    sluice_core::cluster::set_executor_address(address);
    tracing::info!(bind = %args.bind, grpc_port, scheduler = %args.scheduler, "sluice executor starting");
    runtime()?.block_on(async move {
        start_executor_process(Arc::new(config))
            .await
            .map_err(|e| anyhow::anyhow!("the executor stopped: {e}"))
    })
}
