//! Reading `images.kdl`, following its imports, and reading `images.lock`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kdl::{KdlDocument, KdlNode};
use miette::LabeledSpan;

use super::diag::{Diag, Diags, did_you_mean};
use super::kdl::{Reader, name};
use super::model::*;
use super::parse;
use super::source::{FileId, Loc, SourceMap, Spanned};
use super::{files, limits};

/// The lock file beside the root config.
pub const LOCK_FILE: &str = "images.lock";

const TOP_LEVEL: [&str; 8] = [
    "import",
    "tool",
    "remote-cache",
    "trusted-keys",
    "kubernetes",
    "matrix",
    "provider",
    "module",
];

struct Loader {
    root: PathBuf,
    sources: SourceMap,
    diags: Diags,
    /// Files being imported, innermost last: to name an import cycle.
    stack: Vec<(PathBuf, Option<Loc>)>,
    tools: BTreeMap<String, Tool>,
    releases: BTreeMap<String, Release>,
    matrices: Vec<MatrixDecl>,
    providers: BTreeMap<String, Provider>,
    modules: BTreeMap<String, Module>,
    remote_cache: Option<Spanned<String>>,
    trusted_keys: Vec<String>,
    /// A file could not be read or parsed: what it would have declared is missing, so "not
    /// declared" is not said of it.
    incomplete: bool,
}

/// Why a path does not name a `.kdl` file, as written or once its symlinks are resolved.
fn not_kdl_file(path: &Path) -> Option<String> {
    let kdl = |p: &Path| p.extension().is_some_and(|e| e == "kdl");
    if !kdl(path) {
        return Some("not a `.kdl` file".into());
    }
    match std::fs::canonicalize(path) {
        Ok(resolved) if !kdl(&resolved) => Some(format!(
            "it resolves to {}, not a `.kdl` file",
            resolved.display()
        )),
        _ => None,
    }
}

/// Why a config file could not be read.
#[derive(Debug)]
enum ReadError {
    Io(std::io::Error),
    /// Not a regular file (a directory, FIFO, device or socket), or a kernel file under
    /// `/proc` or `/sys`.
    NotRegular(&'static str),
    TooLarge(u64),
    /// Not UTF-8: the byte offset, line and column of the first bad byte.
    NotUtf8 {
        offset: usize,
        line: usize,
        column: usize,
    },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::NotRegular(what) => write!(f, "it is {what}, not a regular file"),
            ReadError::TooLarge(n) => write!(
                f,
                "it is {n} bytes, more than the {} bytes a config may be",
                limits::MAX_CONFIG_BYTES
            ),
            ReadError::NotUtf8 {
                offset,
                line,
                column,
            } => write!(
                f,
                "it is not UTF-8: invalid byte at offset {offset} (line {line}, column {column})"
            ),
        }
    }
}

impl ReadError {
    fn help(&self, import: bool) -> &'static str {
        match self {
            ReadError::Io(_) if import => {
                "imports are relative to the importing file; check the path"
            }
            ReadError::Io(_) => "run kiln in the directory of images.kdl, or pass -f PATH",
            ReadError::NotRegular(_) => "a config must be a regular KDL file",
            ReadError::TooLarge(_) => "split the config into files that import each other",
            ReadError::NotUtf8 { .. } => "save the file as UTF-8",
        }
    }
}

/// Reads a config file: only a regular file, at most [`limits::MAX_CONFIG_BYTES`], as UTF-8.
fn read_config(path: &Path) -> Result<String, ReadError> {
    let bytes = files::read_regular(path, limits::MAX_CONFIG_BYTES).map_err(|e| match e {
        files::ReadError::Io(e) => ReadError::Io(e),
        files::ReadError::NotRegular(what) => ReadError::NotRegular(what),
        files::ReadError::TooLarge { size, .. } => ReadError::TooLarge(size),
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let before = &e.as_bytes()[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count()
            + 1;
        ReadError::NotUtf8 {
            offset,
            line,
            column,
        }
    })
}

/// Reads a file into the source map, or reports why it cannot.
fn read_source(sources: &mut SourceMap, name: String, path: &Path) -> Result<FileId, ReadError> {
    let text = read_config(path)?;
    Ok(sources.add(name, path.to_path_buf(), text))
}

/// Why a text could not be parsed as KDL.
enum ParseError {
    TooComplex(limits::TooComplex),
    Kdl(kdl::KdlError),
    /// The parser's thread could not be started or did not finish.
    Thread(String),
}

/// Parses KDL 2 text, after checking that its nesting is within bounds, on a thread with a stack
/// sized for the text (see [`limits::parser_stack_bytes`]).
fn parse_kdl(text: &Arc<String>) -> Result<KdlDocument, ParseError> {
    if let Some(problem) = limits::scan(text) {
        return Err(ParseError::TooComplex(problem));
    }
    let input = text.clone();
    let worker = std::thread::Builder::new()
        .name("kdl-parse".into())
        .stack_size(limits::parser_stack_bytes(text.len()))
        .spawn(move || KdlDocument::parse_v2(&input))
        .map_err(|e| ParseError::Thread(format!("cannot start the parser: {e}")))?;
    match worker.join() {
        Ok(result) => result.map_err(ParseError::Kdl),
        Err(_) => Err(ParseError::Thread("the KDL parser failed".into())),
    }
}

/// The diagnostic for text that could not be parsed.
fn parse_error(sources: &SourceMap, file: FileId, err: &ParseError) -> Diag {
    let src = sources.named(file);
    match err {
        ParseError::Kdl(e) => syntax_error(sources, file, e),
        ParseError::TooComplex(limits::TooComplex::Nesting { offset }) => Diag::error(
            "kiln::config::too-deep",
            format!(
                "blocks nested more than {} levels deep",
                limits::MAX_NESTING
            ),
        )
        .with_source(src)
        .raw_label(LabeledSpan::new_with_span(
            Some("this block is too deep".into()),
            (*offset, 1),
        ))
        .help("kiln's config language nests a few levels; check for an unclosed `}`"),
        ParseError::TooComplex(limits::TooComplex::Comment { offset }) => Diag::error(
            "kiln::config::comment-too-complex",
            format!(
                "block comment nested more than {} levels or holding more than {} `*` and `/`",
                limits::MAX_COMMENT_NESTING,
                limits::MAX_COMMENT_MARKS
            ),
        )
        .with_source(src)
        .raw_label(LabeledSpan::new_with_span(
            Some("this comment".into()),
            (*offset, 2),
        ))
        .help("write the comment as `//` lines"),
        ParseError::Thread(m) => Diag::error("kiln::config::syntax", m.clone()).with_source(src),
    }
}

/// The first diagnostic of a KDL syntax error, re-wrapped with the file name; the parser's
/// follow-on diagnostics are usually noise caused by the first.
fn syntax_error(sources: &SourceMap, file: FileId, err: &kdl::KdlError) -> Diag {
    let src = sources.named(file);
    match err.diagnostics.first() {
        Some(d) => {
            let message = d.message.clone().unwrap_or_else(|| "invalid KDL".into());
            let label = d.label.clone().unwrap_or_else(|| "here".into());
            let text = &sources.get(file).text;
            let help = match (
                unquoted_version(text, d.span.offset()),
                kdl_v1_keyword(text, d.span.offset()),
            ) {
                (Some(v), _) => format!(
                    "quote it: \"{v}\" (versions are strings; unquoted, KDL reads them as numbers)"
                ),
                (None, Some(k)) => format!(
                    "KDL 2 writes `{k}` as `#{k}` (a bare `{k}` is KDL 1); to mean the string, quote it: \"{k}\""
                ),
                (None, None) => d
                    .help
                    .clone()
                    .unwrap_or_else(|| "see https://kdl.dev for the KDL 2.0 syntax".into()),
            };
            Diag::error(
                "kiln::config::syntax",
                format!("KDL syntax error: {message}"),
            )
            .with_source(src)
            .raw_label(LabeledSpan::new_with_span(Some(label), d.span))
            .help(help)
        }
        None => Diag::error("kiln::config::syntax", "KDL syntax error").with_source(src),
    }
}

/// The byte range of the run of `is_part` characters around `offset` (clamped to a char
/// boundary), possibly empty.
fn word_at(text: &str, offset: usize, is_part: impl Fn(char) -> bool) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let start = text[..offset]
        .char_indices()
        .rev()
        .find(|&(_, c)| !is_part(c))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let end = text[offset..]
        .find(|c: char| !is_part(c))
        .map_or(text.len(), |i| offset + i);
    (start, end)
}

/// A dotted version such as `1.31.4` written without quotes around `offset`, which KDL cannot
/// parse as a number.
fn unquoted_version(text: &str, offset: usize) -> Option<String> {
    let (start, end) = word_at(text, offset, |c| c.is_ascii_digit() || c == '.');
    let word = &text[start..end];
    let dots = word.matches('.').count();
    (dots >= 2
        && word
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
    .then(|| word.to_string())
}

/// A KDL 1 keyword (`true`, `false`, `null`, `inf`, `nan`) written bare where the error is:
/// KDL 2 reserves those words and writes the values as `#true` and so on.
fn kdl_v1_keyword(text: &str, offset: usize) -> Option<&'static str> {
    let (start, end) = word_at(text, offset, |c| c.is_ascii_alphanumeric() || c == '-');
    if text[..start].ends_with('#') {
        return None;
    }
    let word = &text[start..end];
    ["true", "false", "null", "inf", "-inf", "nan"]
        .into_iter()
        .find(|k| *k == word)
}

impl Loader {
    fn reader(&mut self, file: FileId) -> Reader<'_> {
        Reader {
            sources: &self.sources,
            file,
            diags: &mut self.diags,
        }
    }

    fn load_file(&mut self, path: PathBuf, display: String, from: Option<Loc>) {
        if let Some(pos) = self.stack.iter().position(|(p, _)| *p == path) {
            let chain: Vec<String> = self.stack[pos..]
                .iter()
                .map(|(p, _)| {
                    self.sources.find(p).map_or_else(
                        || p.display().to_string(),
                        |f| self.sources.get(f).name.clone(),
                    )
                })
                .chain(std::iter::once(display.clone()))
                .collect();
            let mut d = Diag::error(
                "kiln::config::import-cycle",
                format!("import cycle: {}", chain.join(" → ")),
            );
            if let Some(loc) = from {
                d = d.label(&self.sources, loc, "this import closes the cycle");
            }
            self.diags.push(d.help("remove one of the imports in the cycle; shared definitions can live in a file both import"));
            return;
        }
        if self.sources.find(&path).is_some() {
            return; // already loaded through another import: a diamond, not a cycle
        }
        if from.is_some() && self.stack.len() >= limits::MAX_IMPORT_DEPTH {
            let mut d = Diag::error(
                "kiln::config::import-too-deep",
                format!(
                    "cannot import `{display}`: imports nest more than {} files deep",
                    limits::MAX_IMPORT_DEPTH
                ),
            );
            if let Some(loc) = from {
                d = d.label(&self.sources, loc, "one import too many");
            }
            self.incomplete = true;
            self.diags.push(
                d.help("import the files from fewer levels (a file may import several files)"),
            );
            return;
        }
        if let Some(loc) = from
            && let Some(why) = not_kdl_file(&path)
        {
            let d = Diag::error(
                "kiln::config::import-not-kdl",
                format!("cannot import `{display}`: {why}"),
            )
            .label(&self.sources, loc, "imported here")
            .help("`import` takes KDL config files, named `*.kdl`");
            self.incomplete = true;
            self.diags.push(d);
            return;
        }
        let file = match read_source(&mut self.sources, display.clone(), &path) {
            Ok(f) => f,
            Err(e) => {
                let code = match (&e, from.is_some()) {
                    (ReadError::Io(_), true) => "kiln::config::import-not-found",
                    (ReadError::Io(_), false) => "kiln::config::not-found",
                    _ => "kiln::config::unreadable",
                };
                let mut d = match from {
                    Some(_) => Diag::error(code, format!("cannot import `{display}`: {e}")),
                    None => Diag::error(code, format!("cannot read config `{display}`: {e}")),
                };
                if let Some(loc) = from {
                    d = d.label(&self.sources, loc, "imported here");
                }
                self.incomplete = true;
                self.diags.push(d.help(e.help(from.is_some())));
                return;
            }
        };
        let text = self.sources.get(file).text.clone();
        let doc = match parse_kdl(&text) {
            Ok(doc) => doc,
            Err(e) => {
                let d = parse_error(&self.sources, file, &e);
                self.incomplete = true;
                self.diags.push(d);
                return;
            }
        };
        self.stack.push((path.clone(), from));
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let display_dir = Path::new(&display)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        for node in doc.nodes() {
            self.top_level(file, &dir, &display_dir, node);
        }
        self.stack.pop();
    }

    fn top_level(&mut self, file: FileId, dir: &Path, display_dir: &Path, node: &KdlNode) {
        let root = self.root.clone();
        match name(node) {
            "import" => {
                let mut r = self.reader(file);
                r.check_shape(node, &[], false);
                let Some(target) = r.single_string(node, "a path to import") else {
                    return;
                };
                let path = parse::join_normalized(dir, &target.value);
                let display = parse::join_normalized(display_dir, &target.value)
                    .to_string_lossy()
                    .into_owned();
                self.load_file(path, display, Some(target.loc));
            }
            "remote-cache" => {
                let mut r = self.reader(file);
                r.check_shape(node, &[], false);
                if let Some(url) = r.single_string(node, "the remote cache URL") {
                    if let Some(prev) = &self.remote_cache {
                        let (a, b) = (prev.loc, url.loc);
                        self.reader(file).duplicate("remote-cache", a, b);
                    }
                    self.remote_cache = Some(url);
                }
            }
            "trusted-keys" => {
                let mut keys = Vec::new();
                let mut r = self.reader(file);
                r.check_shape(node, &[], false);
                let mut any = false;
                for entry in crate::config::kdl::args(node) {
                    any = true;
                    let Some(key) = r.string(entry, "a public key NAME:BASE64") else {
                        continue;
                    };
                    match crate::store::remote::keys::PublicKey::parse(&key.value) {
                        Ok(_) => keys.push(key.value),
                        Err(e) => r.error_at(
                            key.loc,
                            "kiln::config::trusted_key",
                            format!("not a public key: {e}"),
                            "this key",
                            "write the public key `kiln cache keygen` prints (or `nix key convert-secret-to-public`): NAME:BASE64 of 32 bytes".into(),
                        ),
                    }
                }
                if !any {
                    r.missing(node, "\"NAME:BASE64\" …", "the public keys to trust");
                }
                self.trusted_keys.extend(keys);
            }
            "tool" => {
                if let Some(t) = parse::tool(&mut self.reader(file), node, dir) {
                    if let Some(prev) = self.tools.get(&t.name) {
                        let (a, b) = (prev.loc, t.loc);
                        self.reader(file)
                            .duplicate(&format!("tool `{}`", t.name), a, b);
                    }
                    self.tools.insert(t.name.clone(), t);
                }
            }
            "kubernetes" => {
                if let Some((rel, _)) = parse::release(&mut self.reader(file), node) {
                    if let Some(prev) = self.releases.get(&rel.series) {
                        let (a, b) = (prev.loc, rel.loc);
                        self.reader(file).duplicate(
                            &format!("kubernetes release {}", rel.series),
                            a,
                            b,
                        );
                    }
                    self.releases.insert(rel.series.clone(), rel);
                }
            }
            "matrix" => {
                if let Some(m) = parse::matrix(&mut self.reader(file), node) {
                    if let Some(prev) = self.matrices.iter().find(|p| p.spec.name == m.spec.name) {
                        let (a, b) = (prev.loc, m.loc);
                        self.reader(file)
                            .duplicate(&format!("matrix `{}`", m.spec.name), a, b);
                    }
                    self.matrices.push(m);
                }
            }
            "provider" => {
                if let Some(p) = parse::provider(&mut self.reader(file), &root, dir, node) {
                    if let Some(prev) = self.providers.get(&p.name) {
                        let (a, b) = (prev.loc, p.loc);
                        self.reader(file)
                            .duplicate(&format!("provider `{}`", p.name), a, b);
                    }
                    self.providers.insert(p.name.clone(), p);
                }
            }
            "module" => {
                if let Some(m) = parse::module(&mut self.reader(file), node) {
                    if let Some(prev) = self.modules.get(&m.name) {
                        let (a, b) = (prev.loc, m.loc);
                        self.reader(file)
                            .duplicate(&format!("module `{}`", m.name), a, b);
                    }
                    self.modules.insert(m.name.clone(), m);
                }
            }
            _ => self
                .reader(file)
                .unknown_node(node, "the config", &TOP_LEVEL),
        }
    }

    /// `images.lock`: `kubernetes "1.32" version="1.32.1" [revision="1.1"] [source="URL"]
    /// [revision-source="URL"]` per tracked series (the sources say where `kiln update` found
    /// the values).
    fn read_lock(&mut self, path: &Path, display: String, options: &LoadOptions) {
        let tracked: Vec<String> = self
            .releases
            .values()
            .filter(|r| r.tracked)
            .map(|r| r.series.clone())
            .collect();
        let mut entries: BTreeMap<String, (Spanned<String>, Option<String>)> = BTreeMap::new();
        if let Some(text) = &options.lock {
            self.sources
                .add(display.clone(), path.to_path_buf(), text.clone());
        }
        if options.lock.is_some() || path.exists() {
            let read = match self.sources.find(path) {
                Some(f) => Ok(f),
                None => read_source(&mut self.sources, display.clone(), path),
            };
            let file = match read {
                Ok(f) => f,
                Err(e) => {
                    self.diags.push(Diag::error(
                        "kiln::lock::read",
                        format!("cannot read {display}: {e}"),
                    ));
                    return;
                }
            };
            let text = self.sources.get(file).text.clone();
            match parse_kdl(&text) {
                Err(e) => {
                    let d = parse_error(&self.sources, file, &e);
                    self.diags.push(d);
                    return;
                }
                Ok(doc) => {
                    for node in doc.nodes() {
                        let mut r = self.reader(file);
                        if name(node) != "kubernetes" {
                            r.unknown_node(node, "images.lock", &["kubernetes"]);
                            continue;
                        }
                        r.check_shape(
                            node,
                            &["version", "revision", "source", "revision-source"],
                            false,
                        );
                        let Some(series) = r.single_string(node, "a release series") else {
                            continue;
                        };
                        let Some(v) = node.entry("version") else {
                            r.missing(node, "version=\"…\"", "the locked version");
                            continue;
                        };
                        let Some(version) = r.string(v, "version") else {
                            continue;
                        };
                        let revision = node
                            .entry("revision")
                            .and_then(|e| r.string(e, "revision"))
                            .map(|s| s.value);
                        for key in ["source", "revision-source"] {
                            if let Some(e) = node.entry(key) {
                                r.string(e, key);
                            }
                        }
                        if parse::check_patch_version(&mut r, &series.value, &version) {
                            entries.insert(series.value, (version, revision));
                        }
                    }
                }
            }
        }
        for series in tracked {
            let rel = self
                .releases
                .get_mut(&series)
                .expect("tracked release exists");
            match entries.remove(&series) {
                Some((version, revision)) => {
                    rel.version = version.value;
                    if let Some(rev) = revision {
                        rel.revision = rev;
                    }
                }
                None if options.unlocked_ok => {}
                None => {
                    let loc = rel.loc;
                    let d = Diag::error(
                        "kiln::lock::missing",
                        format!("series {series} is tracked but {LOCK_FILE} has no version for it"),
                    )
                    .label(&self.sources, loc, "tracked here")
                    .help(format!(
                        "run `kiln update {series}`, or add `kubernetes \"{series}\" version=\"{series}.0\"` to {LOCK_FILE}"
                    ));
                    self.diags.push(d);
                }
            }
        }
    }

    /// Checks that need every file: providers against their modules.
    fn check_providers(&mut self) {
        let module_names: Vec<String> = self.modules.keys().cloned().collect();
        let mut found = Vec::new();
        for p in self.providers.values() {
            let Some(module) = self.modules.get(&p.module.value) else {
                if self.incomplete {
                    continue;
                }
                let names: Vec<&str> = module_names.iter().map(String::as_str).collect();
                found.push(
                    Diag::error("kiln::config::unknown-module", format!("provider `{}` uses module `{}`, which is not declared", p.name, p.module.value))
                        .label(&self.sources, p.module.loc, "no such module")
                        .help(format!(
                            "import the module file (e.g. `import \"modules/{}.kdl\"`) or set module=\"…\"; {}",
                            p.module.value,
                            did_you_mean(&p.module.value, &names, "module")
                        )),
                );
                continue;
            };
            let declared: Vec<&str> = module.settings.keys().map(String::as_str).collect();
            let overlays = std::iter::once(&p.body).chain(p.overrides.iter().map(|o| &o.body));
            for body in overlays {
                for (key, v) in &body.settings {
                    if !module.settings.contains_key(key) {
                        let mut allowed: Vec<&str> = declared.clone();
                        allowed.extend([
                            "var", "patch", "ship", "secret", "limit", "retries", "timeout",
                            "override", "alias",
                        ]);
                        found.push(
                            Diag::error(
                                "kiln::config::unknown",
                                format!("unknown node `{key}` in provider `{}`", p.name),
                            )
                            .label(
                                &self.sources,
                                v.loc,
                                "not a setting of this provider's module",
                            )
                            .help(format!(
                                "{} (module `{}` declares: {})",
                                did_you_mean(key, &allowed, "setting"),
                                module.name,
                                if declared.is_empty() {
                                    "no settings".to_string()
                                } else {
                                    declared.join(", ")
                                }
                            )),
                        );
                    }
                }
            }
            for s in module
                .settings
                .values()
                .filter(|s| s.required && s.default.is_none())
            {
                if !p.body.settings.contains_key(&s.name) {
                    found.push(
                        Diag::error(
                            "kiln::config::missing",
                            format!("provider `{}` must set `{}`", p.name, s.name),
                        )
                        .label(&self.sources, p.loc, "setting missing in this block")
                        .label(&self.sources, s.loc, "required by the module here")
                        .help(format!(
                            "add `{} \"…\"` inside `provider \"{}\" {{ … }}`",
                            s.name, p.name
                        )),
                    );
                }
            }
        }
        found.extend(self.check_aliases());
        for d in found {
            self.diags.push(d);
        }
    }

    /// An alias names one provider: it is neither a provider's name nor another's alias.
    fn check_aliases(&self) -> Vec<Diag> {
        let mut found = Vec::new();
        let mut seen: BTreeMap<&str, (&str, Loc)> = BTreeMap::new();
        for p in self.providers.values() {
            for a in &p.aliases {
                if let Some(other) = self.providers.get(&a.value) {
                    let what = if other.name == p.name {
                        "its own name".to_string()
                    } else {
                        format!("the name of provider `{}`", other.name)
                    };
                    found.push(
                        Diag::error(
                            "kiln::config::alias-taken",
                            format!("alias `{}` of provider `{}` is {what}", a.value, p.name),
                        )
                        .label(&self.sources, a.loc, "this alias")
                        .label(&self.sources, other.loc, "provider declared here")
                        .help("an alias is another name for a provider; remove it or choose a name no provider has"),
                    );
                } else if let Some((owner, first)) = seen.get(a.value.as_str()) {
                    found.push(
                        Diag::error(
                            "kiln::config::alias-taken",
                            format!(
                                "alias `{}` is declared by providers `{owner}` and `{}`",
                                a.value, p.name
                            ),
                        )
                        .label(&self.sources, *first, "first declared here")
                        .label(&self.sources, a.loc, "declared again here")
                        .help("a build request's `provider` must name one provider; keep the alias on one of them"),
                    );
                } else {
                    seen.insert(&a.value, (&p.name, a.loc));
                }
            }
        }
        found
    }
}

/// How to read `images.lock`.
#[derive(Debug, Default, Clone)]
pub struct LoadOptions {
    /// Its text, instead of the file's (`kiln update --dry-run` plans against the lock it would
    /// write).
    pub lock: Option<String>,
    /// A tracked series the lock has no line for is no error: its version is left empty (for
    /// `kiln update`, which resolves it; such a config cannot be lowered).
    pub unlocked_ok: bool,
}

/// The config file's absolute path, normalized.
fn absolute(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    parse::join_normalized(Path::new("/"), &abs.to_string_lossy())
}

/// The root of the config `path` names: its directory ([`Config::root`]).
pub fn root_of(path: &Path) -> PathBuf {
    absolute(path)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Loads a config file and everything it imports. Returns the config and its warnings, or every
/// error found.
pub fn load(path: &Path) -> Result<(Config, Diags), Diags> {
    load_with(path, &LoadOptions::default())
}

/// [`load`], reading `images.lock` as `options` say.
pub fn load_with(path: &Path, options: &LoadOptions) -> Result<(Config, Diags), Diags> {
    let display = path.to_string_lossy().into_owned();
    let abs = absolute(path);
    let root = abs.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut l = Loader {
        root: root.clone(),
        sources: SourceMap::default(),
        diags: Diags::default(),
        stack: Vec::new(),
        tools: BTreeMap::new(),
        releases: BTreeMap::new(),
        matrices: Vec::new(),
        providers: BTreeMap::new(),
        modules: BTreeMap::new(),
        remote_cache: None,
        trusted_keys: Vec::new(),
        incomplete: false,
    };
    l.load_file(abs, display.clone(), None);
    if l.sources.files().next().is_none() {
        return Err(l.diags);
    }
    let lock_display = Path::new(&display)
        .with_file_name(LOCK_FILE)
        .to_string_lossy()
        .into_owned();
    l.read_lock(&root.join(LOCK_FILE), lock_display, options);
    l.check_providers();
    if l.diags.has_errors() {
        return Err(l.diags);
    }
    let config = Config {
        root,
        sources: l.sources,
        tools: l.tools,
        releases: l.releases,
        matrices: l.matrices,
        providers: l.providers,
        modules: l.modules,
        remote_cache: l.remote_cache.map(|u| u.value),
        trusted_keys: l.trusted_keys,
    };
    Ok((config, l.diags))
}
