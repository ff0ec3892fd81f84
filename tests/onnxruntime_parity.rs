//! The exported graphs are standard ONNX: `onnx.checker` accepts them and onnxruntime (a
//! runtime nobody here wrote) decoding by the model contract gives tract's logits. Needs
//! python3 with `onnx` and `onnxruntime`; CI installs them and sets
//! DEGRE_REQUIRE_ONNXRUNTIME=1 so the check cannot be skipped there.

use std::io::Write;
use std::process::{Command, Stdio};

use degre::contract::manifest::Limits;
use degre::network::export::{default_schema, version_files};
use degre::network::{Dims, Mixer, Weights};
use degre::repository::publish::publish_files;
use degre::repository::Repository;
use degre::rerank::InputBuilder;
use degre::runtime::Engine;

#[test]
fn onnxruntime_decodes_like_tract() {
    let schema = default_schema();
    let weights = Weights::init(
        &schema,
        Dims {
            hidden: 32,
            embed: 8,
            mixer: Mixer::Attention,
        },
        5,
    );
    let dir = tempfile::tempdir().unwrap();
    let files = version_files(
        &weights,
        &schema,
        "m",
        Limits { max_candidates: 64 },
        serde_json::Value::Null,
    );
    publish_files(dir.path(), "m", &files).unwrap();
    let generator = Repository::open(dir.path(), None).unwrap().load(1).unwrap();

    let n = 9;
    let mut b = InputBuilder::new(&schema, n, n).unwrap();
    b.context(&[0.3, -0.2, 0.9, 0.0], &[20]).unwrap();
    for i in 0..n {
        let dense: Vec<f32> = (0..8)
            .map(|j| ((i * 5 + j * 3) % 11) as f32 / 5.0 - 1.0)
            .collect();
        b.candidate(
            i,
            format!("i{i}"),
            &dense,
            &[(i * 9) as i64, (i * 40) as i64],
            Some(((i * 7) % 5) as f32 - 1.5),
        )
        .unwrap();
    }
    let input = b.finish(0).unwrap();
    let prefix = [4, 0, 8, 2, 6];
    let along = |engine| generator.logits_along(&input, &prefix, engine).unwrap();
    let (tract, native) = (along(Engine::TractGeneric), along(Engine::Native));

    let job = serde_json::json!({
        "dir": dir.path().join("m/1"),
        "context_dense": input.context_dense,
        "context_ids": input.context_ids,
        "candidate_dense": input.candidate_dense.chunks(8).collect::<Vec<_>>(),
        "candidate_ids": input.candidate_ids,
        "upstream": input.upstream.chunks(2).collect::<Vec<_>>(),
        "prefix": prefix,
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/onnxruntime_decode.py");
    let child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(job.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success()
        && stderr.contains("ModuleNotFoundError")
        && std::env::var_os("DEGRE_REQUIRE_ONNXRUNTIME").is_none()
    {
        eprintln!("onnxruntime check not run: {stderr}");
        return;
    }
    assert!(out.status.success(), "{stderr}");
    let ort: Vec<Vec<f32>> = serde_json::from_slice(&out.stdout).unwrap();
    for (engine, ours) in [("tract", &tract), ("native", &native)] {
        assert_eq!(ort.len(), ours.len());
        for (step, (a, b)) in ort.iter().zip(ours).enumerate() {
            assert_eq!(a.len(), n);
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                    "step {step}: onnxruntime {x} vs {engine} {y}"
                );
            }
        }
    }
}
