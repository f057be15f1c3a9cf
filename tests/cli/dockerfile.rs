//! The Dockerfile of the tasks' image. No container runtime is here to build it, so this checks
//! what can be checked without one: it parses, a builder stage builds every binary Cargo.toml
//! declares, the runtime stage copies exactly those from where cargo puts them, and it installs
//! what the builders shell out to.

use dockerfile_parser::{Dockerfile, Instruction};

use crate::support::repo_root;

/// The `[[bin]]` names of Cargo.toml.
fn cargo_bins() -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let mut bins = Vec::new();
    let mut in_bin = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(name) = line.strip_prefix("name = ") {
            bins.push(name.trim_matches('"').to_string());
        }
    }
    bins.sort();
    bins
}

#[test]
fn the_dockerfile_builds_and_ships_kilns_binaries() {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let file = Dockerfile::parse(&text).expect("the Dockerfile parses");
    let stages = file.stages();
    let names: Vec<Option<&str>> = stages.iter().map(|s| s.name.as_deref()).collect();
    assert_eq!(names, [Some("builder"), Some("runtime")]);
    let bins = cargo_bins();
    assert_eq!(bins, ["kiln"]);

    let builder = stages.get_by_name("builder").unwrap();
    let runs: Vec<String> = builder
        .instructions
        .iter()
        .filter_map(|i| i.as_run()?.as_shell().map(|s| s.to_string()))
        .collect();
    let cargo = runs
        .iter()
        .find(|r| r.contains("cargo build"))
        .expect("the builder runs cargo build");
    assert!(cargo.contains("--release"), "{cargo}");
    for b in &bins {
        assert!(
            cargo.contains(&format!("--bin {b}")),
            "{cargo} builds no {b}"
        );
    }

    let runtime = stages.get_by_name("runtime").unwrap();
    let from = runtime.instructions[0].as_from().unwrap();
    assert!(from.image.content.starts_with("debian:") && from.image.content.ends_with("-slim"));
    let mut copied: Vec<String> = Vec::new();
    for i in &runtime.instructions {
        if let Instruction::Copy(c) = i {
            let flag = c.flags.iter().find(|f| f.name.content == "from").unwrap();
            assert_eq!(flag.value.content, "builder");
            assert_eq!(c.destination.content, "/usr/local/bin/");
            for s in &c.sources {
                let bin = s
                    .content
                    .strip_prefix("/src/target/release/")
                    .unwrap_or_else(|| panic!("{} is not where cargo builds", s.content));
                copied.push(bin.to_string());
            }
        }
    }
    copied.sort();
    assert_eq!(copied, bins);
    let apt = runtime
        .instructions
        .iter()
        .filter_map(|i| i.as_run()?.as_shell().map(|s| s.to_string()))
        .find(|r| r.contains("apt-get install"))
        .expect("the runtime installs packages");
    for pkg in [
        "ca-certificates",
        "e2fsprogs",
        "qemu-utils",
        "make",
        "git",
        "jq",
    ] {
        assert!(
            apt.split_whitespace().any(|w| w == pkg),
            "{pkg} is not installed: {apt}"
        );
    }
    // The image the exports name by default is the one the Dockerfile says to build.
    let tag = format!("kiln:{}", env!("CARGO_PKG_VERSION"));
    assert!(text.contains(&format!("docker build -t {tag} .")), "{text}");
    let p = crate::truth::local_example();
    let out = p.kiln(&["-f", crate::truth::F, "export", "argo", "--all"]);
    assert!(
        out.stdout.contains(&format!("image: {tag}\n")),
        "{}",
        out.stdout
    );
}
