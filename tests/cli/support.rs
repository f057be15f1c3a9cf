//! Running the real `kiln` binary on a copy of a fixture, and comparing output with golden files.
//!
//! A [`Project`] is a temporary directory filled from fixture directories; [`Project::kiln`] runs
//! the binary there. Golden files live in `tests/data/<case>/`; run the tests with
//! `KILN_BLESS=1` to (re)write them instead of comparing.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/data`.
pub fn data_dir() -> PathBuf {
    repo_root().join("tests").join("data")
}

/// `tests/data/<case>`.
pub fn case_dir(case: &str) -> PathBuf {
    data_dir().join(case)
}

/// Copies `from` (a file or a directory, recursively) to `to`, keeping permissions.
pub fn copy_tree(from: &Path, to: &Path) {
    let meta = fs::metadata(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    if meta.is_dir() {
        fs::create_dir_all(to).unwrap();
        let mut entries: Vec<_> = fs::read_dir(from)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            copy_tree(&p, &to.join(p.file_name().unwrap()));
        }
    } else {
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
}

/// What a run of the binary produced.
#[derive(Debug, Clone)]
pub struct Output {
    /// The exit code (`-1` when killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Asserts the exit code, showing both streams when it differs.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Output {
        assert_eq!(
            self.code, code,
            "unexpected exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{}", self.stdout))
    }
}

/// A temporary working directory to run `kiln` in.
pub struct Project {
    dir: TempDir,
    env: BTreeMap<String, String>,
    unset: Vec<String>,
    clean_env: bool,
}

impl Default for Project {
    fn default() -> Self {
        Project::new()
    }
}

impl Project {
    /// An empty project.
    ///
    /// It is made under `/tmp` when that exists, so its path has the same length on every
    /// machine: miette wraps long lines, and a message that quotes an absolute path must wrap at
    /// the same place for its golden file to match after [`Project::redact`].
    pub fn new() -> Project {
        let mut b = tempfile::Builder::new();
        b.prefix("kiln-test-").rand_bytes(8);
        let tmp = Path::new("/tmp");
        let dir = if tmp.is_dir() {
            b.tempdir_in(tmp)
        } else {
            b.tempdir()
        };
        Project {
            dir: dir.unwrap(),
            env: BTreeMap::new(),
            unset: Vec::new(),
            clean_env: false,
        }
    }

    /// A project holding a copy of everything in `tests/data/<case>`.
    pub fn from_case(case: &str) -> Project {
        Project::new().with_dir(&case_dir(case))
    }

    /// A project holding a copy of the repository's own config (images.kdl, images.lock,
    /// modules/, config/).
    pub fn repo_config() -> Project {
        let root = repo_root();
        let mut p = Project::new();
        for name in ["images.kdl", "images.lock", "modules", "config"] {
            p = p.with_path(&root.join(name), name);
        }
        p
    }

    /// Copies the contents of directory `from` into the project root.
    pub fn with_dir(self, from: &Path) -> Project {
        copy_tree(from, self.path());
        self
    }

    /// Copies a file or directory to `to` (relative to the project root).
    pub fn with_path(self, from: &Path, to: &str) -> Project {
        copy_tree(from, &self.path().join(to));
        self
    }

    /// Writes a file (relative to the project root), creating its directory.
    pub fn with_file(self, rel: &str, text: &str) -> Project {
        self.write(rel, text);
        self
    }

    /// Sets an environment variable for every later run.
    pub fn env(mut self, key: &str, value: &str) -> Project {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Runs kiln with an empty environment except `PATH` (and what [`Project::env`] sets): no
    /// credentials, no proxies, no `HOME`.
    pub fn clean_env(mut self) -> Project {
        self.clean_env = true;
        self
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        self.unset.retain(|k| k != key);
        self.env.insert(key.into(), value.into());
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The variables set with [`Project::env`].
    pub fn env_vars(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path().join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&p, text).unwrap_or_else(|e| panic!("{rel}: {e}"));
    }

    /// Rewrites a file with `edit`, panicking if the edit changes nothing (a stale test).
    #[track_caller]
    pub fn edit(&self, rel: &str, edit: impl FnOnce(&str) -> String) {
        let before = self.read(rel);
        let after = edit(&before);
        assert_ne!(before, after, "editing {rel} changed nothing");
        self.write(rel, &after);
    }

    /// Replaces the project's (temporary, so varying) directory with `[ROOT]`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        let canonical = fs::canonicalize(self.path()).unwrap_or_else(|_| self.path().into());
        for root in [canonical.as_path(), self.path()] {
            out = out.replace(&*root.to_string_lossy(), "[ROOT]");
        }
        out
    }

    /// Runs `kiln ARGS` in the project directory, with `NO_COLOR=1`, no inherited `KILN_*`,
    /// `GITHUB_*`, `CI` or `CLICOLOR*` variables, and the variables set with [`Project::env`].
    pub fn kiln(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        self.output(cmd.output().expect("run kiln"))
    }

    /// What a run of kiln in this project printed, redacted.
    fn output(&self, out: std::process::Output) -> Output {
        let text = |b: Vec<u8>| self.redact(&String::from_utf8(b).expect("output is UTF-8"));
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: text(out.stdout),
            stderr: text(out.stderr),
        }
    }

    /// Runs kiln with `args` in every project at once (all started before any is waited for),
    /// as runners sharing a remote do.
    pub fn kiln_at_once(projects: &[Project], args: &[&str]) -> Vec<Output> {
        let children: Vec<_> = projects
            .iter()
            .map(|p| {
                let mut cmd = p.command(args);
                cmd.stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                (p, cmd.spawn().expect("start kiln"))
            })
            .collect();
        children
            .into_iter()
            .map(|(p, child)| p.output(child.wait_with_output().expect("run kiln")))
            .collect()
    }

    /// The command [`Project::kiln`] runs, to spawn it another way.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(args).current_dir(self.path());
        if self.clean_env {
            cmd.env_clear();
            if let Some(path) = std::env::var_os("PATH") {
                cmd.env("PATH", path);
            }
        }
        cmd.env("NO_COLOR", "1");
        // Nothing of the environment the tests run in decides how kiln reports: not a CI
        // runner's variables, not a forced colour.
        for (k, _) in std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
            .filter(|(k, _)| {
                k.starts_with("KILN_")
                    || k.starts_with("GITHUB_")
                    || ["CI", "CLICOLOR", "CLICOLOR_FORCE"].contains(&k.as_str())
            })
        {
            cmd.env_remove(k);
        }
        cmd.envs(&self.env);
        for k in &self.unset {
            cmd.env_remove(k);
        }
        cmd
    }

    /// Removes a variable that every run would otherwise get (such as `NO_COLOR`).
    pub fn unset_env(&mut self, key: &str) {
        self.env.remove(key);
        self.unset.push(key.to_string());
    }
}

/// Whether goldens are being (re)written rather than compared.
pub fn blessing() -> bool {
    std::env::var_os("KILN_BLESS").is_some_and(|v| v == "1")
}

/// Compares `actual` with `tests/data/<case>/<file>`; with `KILN_BLESS=1`, writes it instead.
#[track_caller]
pub fn golden(case: &str, file: &str, actual: &str) {
    let path = case_dir(case).join(file);
    if blessing() {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, actual).unwrap();
        return;
    }
    let expected = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden tests/data/{case}/{file}: {e}; run with KILN_BLESS=1 to create it\n--- actual\n{actual}"
        )
    });
    if expected != actual {
        let diff = similar::TextDiff::from_lines(expected.as_str(), actual);
        panic!(
            "tests/data/{case}/{file} differs (run with KILN_BLESS=1 to update):\n{}",
            diff.unified_diff()
                .context_radius(3)
                .header("expected", "actual")
        );
    }
}

/// No file under `dir` (config, cache, logs) holds `secret`.
#[track_caller]
pub fn assert_nowhere(dir: &Path, secret: &str) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            assert_nowhere(&p, secret);
        } else if let Ok(bytes) = fs::read(&p) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains(secret),
                "the secret is in {}",
                p.display()
            );
        }
    }
}
