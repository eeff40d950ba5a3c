//! What a task costs: criterion micro-benchmarks, `cargo bench -p sluice-bench`.
//!
//! - `task_chain/*`: a flow whose tasks each add one column to a small in-memory frame,
//!   then collect, against the same projections written in plain DataFusion. The slope
//!   over the task count is the per-task cost (planning, the boundary node, the run
//!   record); the plain DataFusion line is the floor.
//! - `boundary_stream/*`: 2M rows in 8,192-row batches streamed through one task
//!   boundary against the same plan without one: the per-batch cost of counting rows
//!   and bytes and attributing errors.
//! - `cache_lookup/*`: building a flow of 10 chained tasks, unpersisted against all
//!   persisted with every task a cache hit on a local store: the difference is the
//!   cost of computing 10 cache keys and looking up and validating 10 checkpoints.
//! - `orchestration/1000_independent_tasks`: a flow that maps a trivial task (it
//!   returns a number) over 1,000 inputs: the per-task cost of the runtime (task run
//!   state, record, permits, span), against Prefect's ~11 ms here. With and without
//!   run history (two small JSON writes per flow run).
//! - `orchestration/plan_chain/N`: building a chain of N with_column tasks and making
//!   its physical plan (no execution): whether planning grows linearly with N.
//!
//! Flows here do not record runs (`with_run_history(false)`) unless the name says so.

// criterion_group!/criterion_main! generate undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice::datafusion::arrow::array::{Float64Array, Int64Array};
use sluice::datafusion::arrow::datatypes::{DataType, Field, Schema};
use sluice::datafusion::arrow::record_batch::RecordBatch;
use sluice::datafusion::datasource::MemTable;
use sluice::datafusion::prelude::{SessionContext, ident};
use sluice::prelude::*;
use tokio::runtime::Runtime;

fn batches(count: usize, rows: usize) -> Vec<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, false),
        Field::new("b", DataType::Float64, false),
    ]));
    (0..count)
        .map(|i| {
            let start = (i * rows) as i64;
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(Int64Array::from_iter_values(start..start + rows as i64)),
                    Arc::new(Float64Array::from_iter_values(
                        (0..rows).map(|r| r as f64 * 0.5),
                    )),
                ],
            )
            .expect("valid batch")
        })
        .collect()
}

/// A source task over `input`, then `tasks` tasks each adding a column, each persisted
/// (tee) when `persist`.
async fn chained(input: Vec<RecordBatch>, tasks: usize, persist: bool) -> Result<Frame> {
    let mut df = Task::new("source")
        .run(|cx| {
            let input = input.clone();
            async move { cx.session().from_batches(input) }
        })
        .await?;
    for i in 0..tasks {
        let mut task = Task::new(format!("step_{i}"));
        if persist {
            task = task.persist(Persist::Tee);
        }
        df = task
            .run(|_cx| {
                let df = df.clone();
                async move { df.with_column(&format!("c{i}"), col("a") + lit(i as i64)) }
            })
            .await?;
    }
    Ok(df)
}

/// A flow of `tasks` tasks, each adding a column, then a collect.
async fn sluice_chain(session: &Session, input: Vec<RecordBatch>, tasks: usize) -> usize {
    let flow = Flow::new("chain").call(serde_json::Value::Null, async move {
        let df = chained(input, tasks, false).await?;
        let out = df.collect().await?;
        Ok(out.iter().map(RecordBatch::num_rows).sum::<usize>())
    });
    flow.with_session(session.clone())
        .configure(|o| o.with_run_history(false))
        .await
        .expect("flow runs")
}

/// The same projections in plain DataFusion.
async fn datafusion_chain(ctx: &SessionContext, input: Vec<RecordBatch>, steps: usize) -> usize {
    let table = MemTable::try_new(input[0].schema(), vec![input]).expect("table");
    let mut df = ctx.read_table(Arc::new(table)).expect("read");
    for i in 0..steps {
        df = df
            .with_column(&format!("c{i}"), ident("a") + lit(i as i64))
            .expect("with_column");
    }
    let out = df.collect().await.expect("collect");
    out.iter().map(RecordBatch::num_rows).sum()
}

fn task_chain(c: &mut Criterion) {
    let runtime = Runtime::new().expect("runtime");
    let session = Session::new();
    let ctx = SessionContext::new();
    let input = batches(1, 1024);
    let mut group = c.benchmark_group("task_chain");
    for tasks in [1usize, 4, 16] {
        group.bench_with_input(BenchmarkId::new("sluice", tasks), &tasks, |b, &n| {
            b.iter(|| runtime.block_on(sluice_chain(&session, black_box(input.clone()), n)))
        });
        group.bench_with_input(BenchmarkId::new("datafusion", tasks), &tasks, |b, &n| {
            b.iter(|| runtime.block_on(datafusion_chain(&ctx, black_box(input.clone()), n)))
        });
    }
    group.finish();
}

fn boundary_stream(c: &mut Criterion) {
    let runtime = Runtime::new().expect("runtime");
    let session = Session::new();
    let ctx = SessionContext::new();
    let input = batches(256, 8192);
    let mut group = c.benchmark_group("boundary_stream");
    group.throughput(Throughput::Elements(256 * 8192));
    group.sample_size(20);
    group.bench_function("sluice_one_task", |b| {
        b.iter(|| runtime.block_on(sluice_chain(&session, black_box(input.clone()), 1)))
    });
    group.bench_function("datafusion", |b| {
        b.iter(|| runtime.block_on(datafusion_chain(&ctx, black_box(input.clone()), 1)))
    });
    group.finish();
}

/// A flow of `tasks` chained tasks over a small frame, each persisted in `store` when
/// `persist`; nothing is executed (no sink), so what is timed is building the flow:
/// planning, cache keys and, when persisted, one checkpoint lookup per task.
async fn keyed_chain(session: &Session, store: &str, tasks: usize, persist: bool) -> usize {
    let input = batches(1, 64);
    let flow = Flow::new("keyed").call(serde_json::Value::Null, async move {
        Ok(chained(input, tasks, persist).await?.columns().len())
    });
    flow.with_session(session.clone())
        .with_result_store(store)
        .configure(|o| o.with_run_history(false))
        .await
        .expect("flow runs")
}

fn cache_lookup(c: &mut Criterion) {
    let runtime = Runtime::new().expect("runtime");
    let session = Session::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().display().to_string();
    // Commit the ten checkpoints once: every timed run is then ten hits.
    runtime.block_on(async {
        let input = batches(1, 64);
        Flow::new("keyed")
            .call(serde_json::Value::Null, async move {
                let mut df = Task::new("source")
                    .run(|cx| {
                        let input = input.clone();
                        async move { cx.session().from_batches(input) }
                    })
                    .await?;
                for i in 0..10 {
                    df = Task::new(format!("step_{i}"))
                        .persist(Persist::Tee)
                        .run(|_cx| {
                            let df = df.clone();
                            async move { df.with_column(&format!("c{i}"), col("a") + lit(i as i64)) }
                        })
                        .await?;
                    df.collect().await?;
                }
                Ok(())
            })
            .with_session(session.clone())
            .with_result_store(&store)
            .await
            .expect("priming run")
    });
    let mut group = c.benchmark_group("cache_lookup");
    group.bench_function("10_tasks_unpersisted", |b| {
        b.iter(|| runtime.block_on(keyed_chain(&session, &store, black_box(10), false)))
    });
    group.bench_function("10_tasks_all_hits_local", |b| {
        b.iter(|| runtime.block_on(keyed_chain(&session, &store, black_box(10), true)))
    });
    group.finish();
}

/// A flow mapping a trivial task over `tasks` inputs; `runs` is where its record goes
/// (none when `None`).
async fn independent_tasks(tasks: u64, runs: Option<&str>) -> u64 {
    let mut call = Flow::new("independent").call(serde_json::Value::Null, async move {
        let all = map(0..tasks, |i| {
            Task::new("trivial").run(move |_cx| async move { Ok(i) })
        })
        .await?;
        Ok(all.iter().sum::<u64>())
    });
    call = match runs {
        Some(store) => call.with_run_store(store),
        None => call.configure(|o| o.with_run_history(false)),
    };
    call.await.expect("flow runs")
}

/// Builds a chain of `tasks` with_column tasks and plans it physically.
async fn plan_chain(session: &Session, tasks: usize) -> usize {
    let input = batches(1, 64);
    let flow = Flow::new("planned").call(serde_json::Value::Null, async move {
        let plan = chained(input, tasks, false)
            .await?
            .to_dataframe()
            .create_physical_plan()
            .await
            .map_err(|e| Error::custom(e.to_string()))?;
        Ok(plan.schema().fields().len())
    });
    flow.with_session(session.clone())
        .configure(|o| o.with_run_history(false))
        .await
        .expect("flow runs")
}

fn orchestration(c: &mut Criterion) {
    let runtime = Runtime::new().expect("runtime");
    let session = Session::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = dir.path().display().to_string();
    let mut group = c.benchmark_group("orchestration");
    group.sample_size(20);
    group.throughput(Throughput::Elements(1000));
    group.bench_function("1000_independent_tasks", |b| {
        b.iter(|| runtime.block_on(independent_tasks(black_box(1000), None)))
    });
    group.bench_function("1000_independent_tasks_recorded", |b| {
        b.iter(|| runtime.block_on(independent_tasks(black_box(1000), Some(&runs))))
    });
    group.finish();
    let mut group = c.benchmark_group("orchestration/plan_chain");
    group.sample_size(10);
    for tasks in [10usize, 100, 500] {
        group.throughput(Throughput::Elements(tasks as u64));
        group.bench_with_input(BenchmarkId::from_parameter(tasks), &tasks, |b, &n| {
            b.iter(|| runtime.block_on(plan_chain(&session, black_box(n))))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    task_chain,
    boundary_stream,
    cache_lookup,
    orchestration
);
criterion_main!(benches);
