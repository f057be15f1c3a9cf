//! A fuzz harness over the config pipeline — read, parse, expand, check, lower, render every
//! diagnostic — run in-process on a fixed budget and a fixed seed, so it is part of every
//! `cargo test` and every failure reproduces. It mutates every config of the repository and of
//! `tests/data` (and the files they import) with KDL's own tokens; nothing may panic, overflow
//! the stack, or render a diagnostic without bound. `KILN_FUZZ_CASES=N` runs more cases.
//!
//! Every input that once crashed kiln is a regression case here too.

use std::path::{Path, PathBuf};

use miette::{GraphicalReportHandler, GraphicalTheme};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

use crate::support::{copy_tree, data_dir, repo_root};

/// The most one rendered diagnostic may take (its excerpt is a few clipped lines).
const MAX_RENDERED: usize = 32 * 1024;

/// Runs the whole pipeline on the config at `root`; returns how many diagnostics it rendered.
fn pipeline(root: &Path) -> usize {
    let h = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor()).with_width(100);
    let mut diags = match kiln::config::load(root) {
        Err(d) => d,
        Ok((config, mut warnings)) => match kiln::config::cells::expand_all(&config) {
            Err(d) => d,
            Ok((cells, more)) => {
                warnings.0.extend(more.0);
                match kiln::config::cells::check_images(&config, &cells) {
                    Err(d) => d,
                    Ok(()) => {
                        let stat = kiln::statcache::StatCache::decode(None);
                        let paths = kiln::graph::input_paths(&config);
                        if let Ok(digests) = stat.digest_all(&paths)
                            && let Err(d) = kiln::graph::lower(&config, cells.into(), &digests)
                        {
                            warnings.0.extend(d.0);
                        }
                        warnings
                    }
                }
            }
        },
    };
    diags.0.truncate(50);
    for d in &diags.0 {
        let mut out = String::new();
        h.render_report(&mut out, &kiln::config::excerpt::View::of(d))
            .expect("rendering a diagnostic");
        assert!(
            out.len() <= MAX_RENDERED,
            "a diagnostic rendered {} bytes:\n{}",
            out.len(),
            &out[..2000]
        );
    }
    diags.0.len()
}

/// One seed: a copy of a project, the config to load in it, and the file to mutate.
struct Seed {
    root: PathBuf,
    target: PathBuf,
    text: Vec<u8>,
}

fn kdl_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            kdl_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "kdl" || x == "lock") {
            out.push(p);
        }
    }
}

/// Every config of the repository and of `tests/data`, copied under `work`.
fn seeds(work: &Path) -> Vec<Seed> {
    let mut projects: Vec<(PathBuf, PathBuf)> = Vec::new(); // (source dir, copy)
    let repo = work.join("repo");
    for name in ["images.kdl", "images.lock", "modules", "config"] {
        copy_tree(&repo_root().join(name), &repo.join(name));
    }
    projects.push((repo_root(), repo));
    for base in [repo_root().join("examples"), data_dir()] {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&base)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("images.kdl").is_file())
            .collect();
        dirs.sort();
        for d in dirs {
            let copy = work.join(format!(
                "{}-{}",
                base.file_name().unwrap().to_string_lossy(),
                d.file_name().unwrap().to_string_lossy()
            ));
            copy_tree(&d, &copy);
            projects.push((d, copy));
        }
    }
    let mut seeds = Vec::new();
    for (_, copy) in projects {
        let mut files = Vec::new();
        kdl_files(&copy, &mut files);
        files.sort();
        for f in files {
            let text = std::fs::read(&f).unwrap();
            seeds.push(Seed {
                root: copy.join("images.kdl"),
                target: f,
                text,
            });
        }
    }
    seeds
}

/// What a mutation inserts: KDL's tokens, and the characters that broke kiln before.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "\"",
    "#",
    "/*",
    "*/",
    "//",
    "\n",
    ";",
    "=",
    "(a)",
    "#true",
    "true",
    "null",
    "1.2.3",
    "\u{feff}",
    "\u{2028}",
    "\u{2029}",
    "\u{85}",
    "..",
    "/",
    "\\",
    "#\"",
    "\"\"\"",
    "a{",
    " ",
    "-1",
    "\"0s\"",
    "90",
    "\"../../x\"",
    "{name}",
    "{os}",
    "é",
    "\r\n",
    "\t",
    "/-",
    "import \"a.kdl\"\n",
    "import \"/proc/self/environ\"\n",
    "ship \"/etc/hostname\" to=\"x\"\n",
    "matrix \"m\" { os \"a\"; }\n",
    "provider \"p\"\n",
    "step \"s\" builder=\"command\"\n",
];

#[derive(Debug, Clone)]
enum Mutation {
    Insert { at: u32, token: usize, times: u16 },
    Delete { at: u32, len: u16 },
    Duplicate { at: u32, len: u16 },
    Byte { at: u32, byte: u8 },
    Truncate { at: u32 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<u32>(), 0..TOKENS.len(), prop_oneof![4 => 1u16..4, 1 => 1u16..3000])
            .prop_map(|(at, token, times)| Mutation::Insert { at, token, times }),
        2 => (any::<u32>(), 1u16..200).prop_map(|(at, len)| Mutation::Delete { at, len }),
        1 => (any::<u32>(), 1u16..400).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
        1 => (any::<u32>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Byte { at, byte }),
        1 => any::<u32>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn apply(text: &mut Vec<u8>, m: &Mutation) {
    let pos = |at: u32, len: usize| if len == 0 { 0 } else { at as usize % (len + 1) };
    match *m {
        Mutation::Insert { at, token, times } => {
            let at = pos(at, text.len());
            let ins = TOKENS[token].repeat(times as usize);
            text.splice(at..at, ins.into_bytes());
        }
        Mutation::Delete { at, len } => {
            let at = pos(at, text.len());
            let end = (at + len as usize).min(text.len());
            text.drain(at..end);
        }
        Mutation::Duplicate { at, len } => {
            let at = pos(at, text.len());
            let end = (at + len as usize).min(text.len());
            let copy = text[at..end].to_vec();
            text.splice(at..at, copy);
        }
        Mutation::Byte { at, byte } => {
            if !text.is_empty() {
                let at = at as usize % text.len();
                text[at] = byte;
            }
        }
        Mutation::Truncate { at } => {
            let at = pos(at, text.len());
            text.truncate(at);
        }
    }
}

#[test]
fn mutated_configs_never_crash_the_pipeline() {
    let work = tempfile::tempdir().unwrap();
    let seeds = seeds(work.path());
    assert!(seeds.len() > 40, "only {} seeds", seeds.len());
    // Every seed as it is first: they must all go through.
    for s in &seeds {
        pipeline(&s.root);
    }
    let cases = std::env::var("KILN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let mut runner = TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(0x6b696c6e),
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    });
    let strategy = (0..seeds.len(), proptest::collection::vec(mutation(), 1..6));
    let result = runner.run(&strategy, |(i, mutations)| {
        let seed = &seeds[i];
        let mut text = seed.text.clone();
        for m in &mutations {
            apply(&mut text, m);
        }
        std::fs::write(&seed.target, &text).unwrap();
        let outcome = std::panic::catch_unwind(|| pipeline(&seed.root));
        std::fs::write(&seed.target, &seed.text).unwrap();
        prop_assert!(
            outcome.is_ok(),
            "{} mutated by {mutations:?} panicked",
            seed.target.display()
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Inputs that once crashed kiln or printed without bound, through the same pipeline.
#[test]
fn every_past_crash_is_a_regression_case() {
    let valid = "module \"m\" {\n    step \"build\" builder=\"command\" {\n        argv \"true\"\n    }\n}\nprovider \"p\" module=\"m\"\nkubernetes \"1.31\" {\n    version \"1.31.4\"\n}\nmatrix \"release\" {\n    kubernetes \"1.31\"\n    provider \"p\"\n    os \"x\"\n}\n";
    let mut cases: Vec<Vec<u8>> = vec![
        "a{".repeat(1400).into_bytes(),
        "a {\n".repeat(1400).into_bytes(),
        "a{/-b{".repeat(1400).into_bytes(),
        "/*".repeat(100_000).into_bytes(),
        format!("/*{}*/", "*".repeat(10_000)).into_bytes(),
        "(a)".repeat(20_000).into_bytes(),
        "}".repeat(20_000).into_bytes(),
        "x=\n".repeat(20_000).into_bytes(),
        format!("{valid}x {}\"unterminated\n", "a ".repeat(40_000)).into_bytes(),
        "a;".repeat(24_000).into_bytes(),
        "a\n".repeat(8_000).into_bytes(),
    ];
    for sep in ["\u{feff}", "\u{2028}", "\u{2029}", "\u{85}"] {
        cases.push(format!("{sep}module \"m\" {{\n  x 1.2.3 {{\n").into_bytes());
        cases.push(format!("module \"m\" {sep}{{ 1.2.3. \n").into_bytes());
    }
    let mut bad_utf8 = valid.as_bytes().to_vec();
    bad_utf8.extend_from_slice(b"// \xff\xfe\n");
    cases.push(bad_utf8);
    let mut chain = format!("{valid}import \"i/0.kdl\"\n").into_bytes();
    let work = tempfile::tempdir().unwrap();
    for i in 0..3000 {
        let f = work.path().join(format!("i/{i}.kdl"));
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, format!("import \"{}.kdl\"\n", i + 1)).unwrap();
    }
    cases.push(std::mem::take(&mut chain));
    let root = work.path().join("images.kdl");
    for text in cases {
        std::fs::write(&root, &text).unwrap();
        assert!(
            pipeline(&root) > 0,
            "{} bytes gave no diagnostic",
            text.len()
        );
    }
}
