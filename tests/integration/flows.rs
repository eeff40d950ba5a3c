//! Tasks and flows: run records, lazy vs eager, laziness, push-down through boundaries.

use sluice::prelude::*;

use crate::common::{counting_session, etl, extract, taxi_file, transform};

#[tokio::test]
async fn a_flow_run_records_every_task_with_state_and_rows() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "in.parquet", 50_000, 16_384);
    let dest = dir.path().join("out.parquet");
    let run = etl(source.to_str().unwrap(), dest.to_str().unwrap())
        .run()
        .await;
    let written = run.output.expect("flow succeeds");
    assert_eq!(written.rows, 50_000);
    assert!(dest.is_file());

    let json = serde_json::to_value(&run.record).unwrap();
    assert_eq!(json["flow"], "etl");
    assert_eq!(json["state"], "Completed");
    assert_eq!(json["mode"], "lazy");
    assert!(!json["run_id"].as_str().unwrap().is_empty());
    assert_eq!(json["parameters"]["source"], source.to_str().unwrap());
    let names: Vec<_> = run.record.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["extract", "transform", "load"]);
    for task in &run.record.tasks {
        assert_eq!(task.state, TaskState::Completed, "{task:?}");
        assert_eq!(task.rows, Some(50_000), "{task:?}");
        assert!(task.bytes.unwrap() > 0, "{task:?}");
        assert!(task.end.is_some() && task.duration_ms.is_some(), "{task:?}");
        assert!(
            task.version.as_ref().is_some_and(|v| v.len() == 16),
            "{task:?}"
        );
    }
    assert_eq!(json["tasks"][0]["rows"], 50_000);
    assert_eq!(json["tasks"][1]["state"], "Completed");
    assert!(run.record.tasks[0].sources[0].ends_with("in.parquet"));
}

#[tokio::test]
async fn lazy_and_eager_runs_write_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "in.parquet", 120_000, 32_768);
    let source = source.to_str().unwrap();
    let lazy = dir.path().join("lazy.parquet");
    let eager = dir.path().join("eager.parquet");
    let lazy_run = etl(source, lazy.to_str().unwrap()).run().await;
    let eager_run = etl(source, eager.to_str().unwrap())
        .with_mode(ExecutionMode::Eager)
        .run()
        .await;
    assert_eq!(lazy_run.output.unwrap().rows, 120_000);
    assert_eq!(eager_run.output.unwrap().rows, 120_000);
    assert_eq!(eager_run.record.mode, ExecutionMode::Eager);
    for task in &eager_run.record.tasks {
        assert_eq!(task.state, TaskState::Completed);
        assert_eq!(task.rows, Some(120_000), "{task:?}");
    }

    let session = Session::new();
    let a = session.read_parquet(lazy.to_str().unwrap()).await.unwrap();
    let b = session.read_parquet(eager.to_str().unwrap()).await.unwrap();
    assert_eq!(a.schema(), b.schema());
    // Every input column is kept with its type, plus tip_fraction as Float64.
    let input = session.read_parquet(source).await.unwrap();
    let mut expected: Vec<_> = input
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    expected.push((
        "tip_fraction".into(),
        datafusion::arrow::datatypes::DataType::Float64,
    ));
    let actual: Vec<_> = a
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    assert_eq!(actual, expected);

    // The same multiset of rows, both ways round (row order is not guaranteed).
    for (left, right) in [(&a, &b), (&b, &a)] {
        let diff = session
            .sql(
                "SELECT * FROM l EXCEPT ALL SELECT * FROM r",
                [("l", left), ("r", right)],
            )
            .await
            .unwrap()
            .count()
            .await
            .unwrap();
        assert_eq!(diff, 0);
    }
    // The generated data has refunds, 0/0 and x/0 rows: IEEE semantics survive the trip.
    let specials = session
        .sql(
            "SELECT count(*) FILTER (WHERE isnan(tip_fraction)) AS nan, \
                    count(*) FILTER (WHERE tip_fraction = 'inf'::double) AS inf, \
                    count(*) FILTER (WHERE total_amount < 0) AS refunds FROM t",
            [("t", &a)],
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let value = |i: usize| {
        specials[0]
            .column(i)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap()
            .value(0)
    };
    assert!(value(0) > 0 && value(1) > 0 && value(2) > 0, "{specials:?}");
}

#[tokio::test]
async fn building_a_lazy_flow_reads_no_row_data() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "in.parquet", 300_000, 65_536);
    let size = std::fs::metadata(&source).unwrap().len();
    let (session, store) = counting_session();
    let dest = dir.path().join("out.parquet");
    let source = source.to_str().unwrap().to_string();
    let dest_text = dest.to_str().unwrap().to_string();
    let counters = std::sync::Arc::clone(&store);
    let run = Flow::new("lazy")
        .with_options(FlowOptions::default().with_session(session))
        .run(serde_json::json!({}), async move {
            let raw = extract(&source).await?;
            let df = transform(raw).await?;
            let before_sink = counters.bytes_read();
            let written = df.write_parquet(&dest_text, ParquetWrite::zstd(1)).await?;
            Ok((before_sink, written))
        })
        .await;
    let (before_sink, written) = run.output.unwrap();
    assert_eq!(written.rows, 300_000);
    // Only the footer (DataFusion reads up to its 512 KiB metadata hint) before the sink...
    assert!(
        before_sink <= 600 * 1024,
        "read {before_sink} of {size} bytes before the sink"
    );
    assert!(
        before_sink < size / 4,
        "read {before_sink} of {size} bytes before the sink"
    );
    // ...and the data once the sink runs.
    assert!(
        store.bytes_read() >= size / 2,
        "read {} of {size} bytes",
        store.bytes_read()
    );
}

#[tokio::test]
async fn eager_mode_reads_each_tasks_data_before_the_next_task_runs() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "in.parquet", 200_000, 65_536);
    let size = std::fs::metadata(&source).unwrap().len();
    let (session, store) = counting_session();
    let source = source.to_str().unwrap().to_string();
    let counters = std::sync::Arc::clone(&store);
    let run = Flow::new("eager")
        .with_options(
            FlowOptions::default()
                .with_session(session)
                .with_mode(ExecutionMode::Eager),
        )
        .run(serde_json::json!({}), async move {
            let raw = extract(&source).await?;
            let after_extract = counters.bytes_read();
            let df = transform(raw).await?;
            let after_transform = counters.bytes_read();
            Ok((after_extract, after_transform, df.count().await?))
        })
        .await;
    let (after_extract, after_transform, rows) = run.output.unwrap();
    assert!(
        after_extract >= size / 2,
        "eager extract read {after_extract} of {size}"
    );
    assert_eq!(
        after_transform, after_extract,
        "transform re-read the source"
    );
    assert_eq!(rows, 200_000);
    assert_eq!(run.record.task("extract").unwrap().rows, Some(200_000));
}

#[tokio::test]
async fn boundaries_let_projection_and_filters_reach_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "in.parquet", 10_000, 4_096);
    let source = source.to_str().unwrap().to_string();
    let plan = Flow::new("pushdown")
        .run(serde_json::json!({}), async move {
            let raw = extract(&source).await?;
            let df = transform(raw).await?;
            df.filter(col("VendorID").eq(lit(1)))?
                .select_columns(&["tip_fraction"])?
                .explain()
                .await
        })
        .await
        .output
        .unwrap();
    assert!(plan.contains("TaskBoundaryExec: task=extract"), "{plan}");
    assert!(plan.contains("TaskBoundaryExec: task=transform"), "{plan}");
    let scan = plan
        .lines()
        .find(|l| l.contains("DataSourceExec"))
        .expect("a scan in the plan");
    assert!(
        scan.contains("projection=[VendorID, tip_amount, total_amount]"),
        "{scan}"
    );
    assert!(scan.contains("predicate=VendorID@0 = 1"), "{scan}");
}

#[tokio::test]
async fn boundaries_count_rows_bytes_and_time_as_datafusion_metrics() {
    // What a cluster's executors report back, and what `EXPLAIN ANALYZE` shows.
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "in.parquet", 10_000, 4_096);
    let source = source.to_str().unwrap().to_string();
    let plan = Flow::new("analyze")
        .run(serde_json::json!({}), async move {
            let raw = extract(&source).await?;
            let batches = raw
                .to_dataframe()
                .explain(false, true)
                .map_err(Error::custom)?
                .collect()
                .await
                .map_err(Error::custom)?;
            Ok(
                datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                    .map_err(Error::custom)?
                    .to_string(),
            )
        })
        .await
        .output
        .unwrap();
    let boundary = plan
        .lines()
        .find(|l| l.contains("TaskBoundaryExec: task=extract"))
        .unwrap_or_else(|| panic!("{plan}"));
    assert!(boundary.contains("output_rows=10.00 K"), "{boundary}");
    assert!(boundary.contains("output_batches=3"), "{boundary}");
    assert!(boundary.contains("output_bytes="), "{boundary}");
    assert!(boundary.contains("elapsed_compute="), "{boundary}");
}

#[tokio::test]
async fn a_lazy_task_whose_output_is_never_consumed_completes_without_rows() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "in.parquet", 1_000, 1_000);
    let source = source.to_str().unwrap().to_string();
    let run = Flow::new("unused")
        .run(serde_json::json!({}), async move {
            extract(&source).await?;
            Ok(())
        })
        .await;
    run.output.unwrap();
    let task = &run.record.tasks[0];
    assert_eq!(task.state, TaskState::Completed);
    assert_eq!(task.rows, None);
}

#[task]
async fn tips_by_zone(cx: &TaskContext, trips: Frame) -> Result<Frame> {
    cx.sql(
        "SELECT \"PULocationID\" AS zone, count(*) AS trips, avg(tip_fraction) AS mean_tip \
         FROM trips WHERE total_amount > 0 GROUP BY \"PULocationID\"",
        [("trips", &trips)],
    )
    .await
}

#[tokio::test]
async fn a_sql_task_queries_its_upstream_frames_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "in.parquet", 20_000, 8_192);
    let source = source.to_str().unwrap().to_string();
    let run = Flow::new("sql")
        .run(serde_json::json!({}), async move {
            let trips = transform(extract(&source).await?).await?;
            let zones = tips_by_zone(trips.clone()).await?;
            let total: u64 = zones
                .aggregate(vec![], vec![sum(col("trips")).alias("n")])?
                .collect()
                .await?
                .iter()
                .map(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<datafusion::arrow::array::Int64Array>()
                        .unwrap()
                        .value(0) as u64
                })
                .sum();
            let positive = trips
                .filter(col("total_amount").gt(lit(0.0)))?
                .count()
                .await?;
            Ok((total, positive))
        })
        .await;
    let (total, positive) = run.output.unwrap();
    assert_eq!(total, positive);
    let names: Vec<_> = run.record.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["extract", "transform", "tips_by_zone"]);
    assert!(
        run.record
            .tasks
            .iter()
            .all(|t| t.state == TaskState::Completed)
    );
}

#[tokio::test]
async fn a_task_called_outside_a_flow_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "in.parquet", 1_000, 1_000);
    let frame = extract(source.to_str().unwrap()).await.unwrap();
    assert_eq!(frame.count().await.unwrap(), 1_000);
}
