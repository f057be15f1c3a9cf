//! `image-builder`: kubernetes-sigs/image-builder, from a local checkout
//! (`make -C …/images/capi TARGET`) or from its container image pinned by digest (`docker run` /
//! `podman run`), with the same inputs either way:
//!
//! - the patched packer template (the `template-patch` node's `template.json`, see
//!   [`super::template_patch`]) in place of
//!   `packer/<provider>/packer.json`;
//! - shipped files and directories at their `to=` path under `images/capi` (in the container,
//!   `/home/imagebuilder`);
//! - one JSON var file with the node's variables, passed in `PACKER_VAR_FILES`; `flag=#true`
//!   variables go into `PACKER_FLAGS` as `-var 'NAME=VALUE'` (`$` doubled for make);
//! - `IB_VERSION` from the pin, and the config's plain `env` variables;
//! - the step's secrets in the child's environment only (the container gets `--env NAME`, never
//!   a value); every other secret of the config is taken out of the environment it inherits;
//! - `PACKER_LOG=1` on retries, and on every attempt with `debug #true` or `kiln build --debug`.
//!
//! A local checkout is never modified: each node stages a copy of its `images/capi`. In a
//! container, a shipped directory is merged with the image's own (copied out of the image) and
//! the merged copy is mounted, so both engines see the same tree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::template_patch::TEMPLATE;
use super::{
    Builder, BuilderError, Explanation, StepCtx, StepFuture, StepOutput, copy_into, io_err,
    local::IMAGE,
};
use crate::config::step::{BuilderSpec, Consumes, ParamSpec, ParamType, SecretUse};
use crate::config::{BuilderKind, StepKind, Value};
use crate::graph::{FileRole, Node};

/// What a retry adds to image-builder's environment: packer's debug log.
pub const DEBUG_ENV: &str = "PACKER_LOG=1";
use crate::imagebuilder::{self, Engine, FLAG_PREFIX, Install};

/// image-builder's home in its container image.
const HOME: &str = "/home/imagebuilder";

pub(super) fn engine(install: &Install) -> Result<Engine, BuilderError> {
    install
        .engine()
        .ok_or(BuilderError::ImageBuilder(ImageBuilderError::NotSetUp))
}

pub(super) fn source(install: &Install) -> Result<&Path, BuilderError> {
    install
        .source
        .as_deref()
        .ok_or(BuilderError::ImageBuilder(ImageBuilderError::NoSource))
}

pub(super) fn image(install: &Install) -> Result<&str, BuilderError> {
    install
        .image
        .as_deref()
        .ok_or(BuilderError::ImageBuilder(ImageBuilderError::NoImage))
}

pub(super) fn param(ctx: &StepCtx, name: &str) -> Result<String, BuilderError> {
    ctx.node
        .recipe
        .params
        .get(name)
        .map(Value::render)
        .ok_or_else(|| BuilderError::MissingParam(name.to_string()))
}

/// What a `image-builder` step takes: its parameters, and the provider inputs it receives.
pub static SPEC: BuilderSpec = BuilderSpec {
    kind: BuilderKind::ImageBuilder,
    params: &[ParamSpec::new(
        "target",
        ParamType::Str,
        true,
        "the make target, e.g. \"build-ami-{os}\"",
    )],
    consumes: Consumes {
        vars: true,
        patches: false,
        files: true,
        secrets: true,
        image_builder: true,
    },
    secrets: SecretUse::Packer,
};

pub struct ImageBuilder;

/// How an `image-builder` step fails beyond its program's exit status.
#[derive(Debug, thiserror::Error)]
pub enum ImageBuilderError {
    #[error("{}", imagebuilder::NOT_SET_UP)]
    NotSetUp,
    #[error("{}", imagebuilder::NO_SOURCE)]
    NoSource,
    #[error("{}", imagebuilder::NO_IMAGE)]
    NoImage,
    /// The checkout has no `images/capi`.
    #[error(
        "{} does not exist; source= must be a checkout of kubernetes-sigs/image-builder (the directory holding images/capi)",
        .0.display()
    )]
    NoCheckout(PathBuf),
    #[error(transparent)]
    Manifest(imagebuilder::ManifestError),
    /// The build succeeded without the manifest its template writes.
    #[error(
        "`{target}` succeeded but packer's manifest post-processor wrote no manifest (manifest_output={manifest_output}); nothing is recorded"
    )]
    NoManifest {
        target: String,
        manifest_output: String,
    },
    /// A googlecompute build without the secret its key file is written from.
    #[error(
        "the secret {0} (the service-account key packer's googlecompute builder reads) is not set"
    )]
    NoKey(&'static str),
    /// A qemu build succeeded without its disk image: where it was looked for.
    #[error("the qemu build succeeded but left no disk image: {0}; nothing is recorded")]
    NoDisk(String),
}

impl Builder for ImageBuilder {
    fn spec(&self) -> &'static BuilderSpec {
        &SPEC
    }

    fn run<'a>(&'a self, ctx: &'a StepCtx) -> StepFuture<'a> {
        Box::pin(run(ctx))
    }

    fn debug_env(&self, _node: &Node) -> Vec<String> {
        vec![DEBUG_ENV.to_string()]
    }

    fn setup_problem(&self, install: &Install) -> Option<(String, String)> {
        install_problem(install)
    }

    fn programs(&self, _node: &Node, install: &Install) -> Vec<(String, String)> {
        match install.engine() {
            Some(Engine::Make) => vec![(
                "make".into(),
                "install make, which runs image-builder's Makefile".into(),
            )],
            _ => engine_program(install).into_iter().collect(),
        }
    }

    /// The exact command the node runs, its environment, the files it is given and its var
    /// file, in a work directory shown as `<work>`.
    fn explain(&self, node: &Node, upstream: &[&Node], install: &Install) -> Option<Explanation> {
        // The patched template comes from the cell's patch node, upstream of validate and build.
        let template = upstream
            .iter()
            .find(|d| d.step == StepKind::Patch)
            .and_then(|d| d.recipe.params.get("template"))
            .map(Value::render);
        let inv = invocation(node, install, Path::new("<work>"), template.as_deref(), 1);
        let mut shown = Explanation::default();
        shown
            .json
            .insert("invocation".into(), invocation_json(&inv));
        shown.text = match inv {
            Ok(inv) => describe(&inv),
            Err(e) => format!("command   (cannot run here: {e})\n"),
        };
        Some(shown)
    }
}

/// Why image-builder cannot be reached with `install`, if so, and how to fix it: the message
/// and help preflight reports.
pub(super) fn install_problem(install: &Install) -> Option<(String, String)> {
    let help = "see `tool \"image-builder\"` in docs/config.md".to_string();
    match install.engine() {
        None => Some((imagebuilder::NOT_SET_UP.into(), help)),
        Some(Engine::Make) => match &install.source {
            None => Some((imagebuilder::NO_SOURCE.into(), help)),
            Some(src) if !src.join("images/capi").is_dir() => Some((
                format!(
                    "{} holds no images/capi: the image-builder source must be a checkout of kubernetes-sigs/image-builder",
                    src.display()
                ),
                "point source= (or --image-builder-source) at the directory holding images/capi"
                    .into(),
            )),
            Some(_) => None,
        },
        Some(Engine::Docker | Engine::Podman) => install
            .image
            .is_none()
            .then(|| (imagebuilder::NO_IMAGE.into(), help)),
    }
}

/// The container engine, when image-builder runs in its image: the program a node runs.
pub(super) fn engine_program(install: &Install) -> Option<(String, String)> {
    match install.engine() {
        Some(e @ (Engine::Docker | Engine::Podman)) => Some((
            e.as_str().into(),
            format!(
                "install {0}, which engine \"{0}\" runs image-builder's image with",
                e.as_str()
            ),
        )),
        _ => None,
    }
}

/// What `kiln explain` prints of an invocation.
fn describe(inv: &Invocation) -> String {
    let mut out = String::new();
    out.push_str(&format!("command   {}\n", inv.argv.join(" ")));
    for (k, v) in &inv.env {
        out.push_str(&format!("env       {k}={v}\n"));
    }
    for name in &inv.secrets {
        out.push_str(&format!("env       {name}=*** (secret)\n"));
    }
    if !inv.env.iter().any(|(k, _)| k == "PACKER_LOG") {
        out.push_str("env       PACKER_LOG=1 (on retries)\n");
    }
    for (from, to) in &inv.files {
        out.push_str(&format!("file      {} → {to}\n", from.display()));
    }
    let vars = serde_json::to_string_pretty(&inv.vars).unwrap_or_default();
    out.push_str("var file\n");
    for line in vars.lines() {
        out.push_str(&format!("  {line}\n"));
    }
    out
}

/// What `kiln explain --json` prints of an invocation (or why there is none here).
fn invocation_json(inv: &Result<Invocation, BuilderError>) -> serde_json::Value {
    match inv {
        Ok(inv) => serde_json::json!({
            "argv": inv.argv,
            "env": inv.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "secrets": inv.secrets,
            "debug_env_on_retry": DEBUG_ENV,
            "files": inv
                .files
                .iter()
                .map(|(from, to)| serde_json::json!({ "from": from.display().to_string(), "to": to }))
                .collect::<Vec<_>>(),
            "vars": inv.vars,
        }),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    }
}

/// Quotes a word for the shell that `make` hands PACKER_FLAGS to.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The var file of a node: every variable but the flag ones, rendered as packer wants them
/// (strings; lists comma-separated).
pub fn var_file(node: &Node) -> BTreeMap<String, String> {
    node.recipe
        .vars
        .iter()
        .filter(|(k, _)| !k.starts_with(FLAG_PREFIX) && !k.starts_with(imagebuilder::ENV_PREFIX))
        .map(|(k, v)| (k.clone(), v.render()))
        .collect()
}

/// `PACKER_FLAGS`: `-var 'NAME=VALUE'` for every `flag=#true` variable, quoted for the shell
/// and escaped for make, which both read it before packer does.
pub fn packer_flags(node: &Node) -> String {
    node.recipe
        .vars
        .iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(FLAG_PREFIX)?;
            Some(format!(
                "-var {}",
                imagebuilder::escape_for_make(&shell_quote(&format!("{name}={}", v.render())))
            ))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The service-account key's file in the step's `kiln/` directory (see [`Invocation::key_file`]).
const GCP_KEY: &str = "gcp-key.json";

/// How one image-builder node runs: the command, its environment (secrets by name only: their
/// values are added to the child's environment at run time and never appear here), the var
/// file, and what is mounted (container) or copied (checkout) where. Computed without running
/// anything, so `kiln explain` shows exactly what `kiln build` will do.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub secrets: Vec<String>,
    /// Variables taken out of the environment the command inherits: the secrets (names and
    /// sources) of the config that are not this step's.
    pub withheld: Vec<String>,
    pub vars: BTreeMap<String, String>,
    /// (file on this machine, where the build sees it).
    pub files: Vec<(PathBuf, String)>,
    /// In a container: each shipped directory, merged with the image's own under
    /// `<work>/stage/<to>` before the run, and mounted from there.
    pub merged: Vec<String>,
    pub container: bool,
    /// What a successful build must leave behind.
    pub produces: Produces,
    /// A googlecompute build's service-account key: the secret
    /// `GOOGLE_APPLICATION_CREDENTIALS_JSON`, written here (0600) for the run only, which
    /// `GOOGLE_APPLICATION_CREDENTIALS` names, as packer's googlecompute builder reads a key
    /// from a file (Google's application default credentials), not from a variable.
    pub key_file: Option<PathBuf>,
}

/// The artifacts a build step promises: a success without them is a failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Produces {
    /// The manifest post-processor's file, for templates that have one (kiln sets
    /// `manifest_output` to `kiln/manifest.json` in the work directory).
    pub manifest: bool,
    /// A qemu build's disk image, where packer writes it.
    pub disk: bool,
}

/// The invocation of `node` in the work directory `work`, with the patched template (if any)
/// replacing `template_rel`, on the `attempt`-th try.
pub fn invocation(
    node: &Node,
    install: &Install,
    work: &Path,
    template_rel: Option<&str>,
    attempt: u32,
) -> Result<Invocation, BuilderError> {
    let target = node
        .recipe
        .params
        .get("target")
        .map(Value::render)
        .ok_or_else(|| BuilderError::MissingParam("target".into()))?;
    let engine = engine(install)?;
    let version = node
        .recipe
        .tools
        .get("image-builder")
        .and_then(|pin| pin.split_whitespace().next())
        .unwrap_or(crate::config::DEFAULT_IMAGE_BUILDER);
    let kiln = work.join("kiln");
    let container = engine != Engine::Make;
    let inside = if container {
        format!("{HOME}/kiln")
    } else {
        kiln.to_string_lossy().into_owned()
    };
    let mut vars = var_file(node);
    let dir = imagebuilder::data(version).and_then(|d| d.template_dir(&target).map(|t| (d, t)));
    let build = node.step == StepKind::Build;
    let mut produces = Produces {
        manifest: false,
        disk: build && dir.is_some_and(|(_, dir)| dir == "qemu"),
    };
    // Where packer's manifest post-processor writes, for templates that have one.
    // A manifest_output the config sets is read where it says (relative to the tree packer
    // runs in); a build must leave it either way.
    if let Some((data, dir)) = dir
        && data.declares(dir, "manifest_output")
    {
        vars.entry("manifest_output".into())
            .or_insert_with(|| format!("{inside}/manifest.json"));
        produces.manifest = build;
    }
    let mut env: Vec<(String, String)> =
        vec![("PACKER_VAR_FILES".into(), format!("{inside}/vars.json"))];
    let flags = packer_flags(node);
    if !flags.is_empty() {
        env.push(("PACKER_FLAGS".into(), flags));
    }
    env.push(("IB_VERSION".into(), imagebuilder::ib_version(version)));
    env.extend(imagebuilder::plain_env(node));
    if super::debug_on(node, attempt)
        && let Some((k, v)) = DEBUG_ENV.split_once('=')
    {
        env.push((k.into(), v.into()));
    }
    let mut secrets: Vec<String> = node.secrets.iter().map(|s| s.name.clone()).collect();
    let key_file = (dir.is_some_and(|(_, dir)| dir == "gce")
        && secrets.iter().any(|s| s == super::gcp_image::KEY_SECRET))
    .then(|| {
        secrets.retain(|s| s != super::gcp_image::KEY_SECRET);
        env.push((
            "GOOGLE_APPLICATION_CREDENTIALS".into(),
            format!("{inside}/{GCP_KEY}"),
        ));
        kiln.join(GCP_KEY)
    });
    let withheld: Vec<String> = install
        .withheld
        .iter()
        .filter(|w| !secrets.contains(w))
        .cloned()
        .collect();
    let mut merged = Vec::new();
    let mut files: Vec<(PathBuf, String)> =
        vec![(kiln.join("vars.json"), format!("{inside}/vars.json"))];
    let ships = node.recipe.files.iter().filter_map(|f| match &f.role {
        FileRole::Ship { to } => Some((
            f.path.clone(),
            to.trim_end_matches('/').to_string(),
            f.is_dir(),
        )),
        FileRole::Patch(_) => None,
    });
    let argv = if container {
        let mut argv: Vec<String> = vec![engine.as_str().into(), "run".into(), "--rm".into()];
        for (k, v) in &env {
            argv.extend(["--env".into(), format!("{k}={v}")]);
        }
        for name in &secrets {
            argv.extend(["--env".into(), name.clone()]); // the value comes from our environment
        }
        let mut mounts: Vec<(PathBuf, String, bool)> = vec![
            (kiln.clone(), "kiln".into(), false),
            (work.join("output"), "output".into(), false),
        ];
        if let Some(rel) = template_rel {
            mounts.push((kiln.join("packer.json"), rel.to_string(), true));
        }
        for (from, to, is_dir) in ships {
            if is_dir {
                // Merged with the image's directory of that name, as `make` merges it.
                merged.push(to.clone());
                mounts.push((work.join("stage").join(&to), to, true));
            } else {
                mounts.push((from, to, true));
            }
        }
        for (from, to, ro) in &mounts {
            let ro = if *ro { ":ro" } else { "" };
            argv.extend([
                "-v".into(),
                format!("{}:{HOME}/{to}{ro}", from.to_string_lossy()),
            ]);
            if from != &kiln && !to.starts_with("output") {
                files.push((from.clone(), format!("{HOME}/{to}")));
            }
        }
        argv.extend([image(install)?.to_string(), target]);
        argv
    } else {
        let capi = work.join("capi");
        if let Some(rel) = template_rel {
            files.push((
                kiln.join("packer.json"),
                capi.join(rel).to_string_lossy().into_owned(),
            ));
        }
        files.extend(
            ships.map(|(from, to, _)| (from, capi.join(to).to_string_lossy().into_owned())),
        );
        vec![
            "make".into(),
            "-C".into(),
            capi.to_string_lossy().into_owned(),
            target,
        ]
    };
    Ok(Invocation {
        argv,
        env,
        secrets,
        withheld,
        vars,
        files,
        merged,
        container,
        produces,
        key_file,
    })
}

/// Copies files or directories out of the container image: (path under images/capi, where to).
/// One container is created for all of them and removed afterwards.
pub(super) async fn copy_out_of_image(
    ctx: &StepCtx,
    install: &Install,
    paths: &[(String, PathBuf)],
    required: bool,
) -> Result<Vec<bool>, BuilderError> {
    let image = image(install)?;
    let bin = engine(install)?.as_str().to_string();
    let name = format!(
        "kiln-{}-{}-{}",
        ctx.node.key.short(),
        std::process::id(),
        ctx.attempt
    );
    let sp = &ctx.spawner;
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    sp.run(
        &argv(&[&bin, "create", "--name", &name, image]),
        &[],
        &ctx.work,
    )
    .await?;
    let mut copied = Vec::new();
    let mut first_err = None;
    for (inside, dest) in paths {
        let r = sp
            .run(
                &argv(&[
                    &bin,
                    "cp",
                    &format!("{name}:{HOME}/{inside}"),
                    &dest.to_string_lossy(),
                ]),
                &[],
                &ctx.work,
            )
            .await;
        match r {
            Ok(()) => copied.push(true),
            Err(e) => {
                copied.push(false);
                first_err.get_or_insert(e);
            }
        }
    }
    let removed = sp.run(&argv(&[&bin, "rm", &name]), &[], &ctx.work).await;
    removed?;
    // The stock template must be there; a shipped directory may be new.
    if required && let Some(e) = first_err {
        return Err(e.into());
    }
    Ok(copied)
}

/// In a container: each shipped directory `to` becomes `<work>/stage/<to>`, the image's own
/// directory of that name with the shipped files copied over it (what `make` sees in its
/// staged checkout), and that is what is mounted.
async fn stage_merged(
    ctx: &StepCtx,
    install: &Install,
    merged: &[String],
) -> Result<(), BuilderError> {
    if merged.is_empty() {
        return Ok(());
    }
    let stage = ctx.work.join("stage");
    let mut paths = Vec::new();
    for to in merged {
        super::command::confined(to, "a shipped file's to=")?;
        let dest = stage.join(to);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("staging shipped directories"))?;
        }
        paths.push((to.clone(), dest));
    }
    let copied = copy_out_of_image(ctx, install, &paths, false).await?;
    for ((to, dest), had) in paths.iter().zip(copied) {
        if !had {
            ctx.spawner.log.line(&format!(
                "{to} is not in the image: the shipped files alone are mounted there"
            ));
        }
        for f in ctx.node.recipe.files.iter() {
            if let FileRole::Ship { to: t } = &f.role
                && t.trim_end_matches('/') == to
            {
                copy_into(&f.path, dest).map_err(io_err("staging shipped directories"))?;
            }
        }
    }
    Ok(())
}

/// The `template-patch` output upstream, with the template path it replaces.
fn patched_template(ctx: &StepCtx) -> Result<Option<(PathBuf, String)>, BuilderError> {
    for (step, r) in &ctx.upstream {
        if *step == StepKind::Patch
            && r.outputs.iter().any(|o| o.name == TEMPLATE)
            && let Some(t) = r.facts.get("template")
        {
            return Ok(Some((ctx.upstream_file(TEMPLATE)?, t.clone())));
        }
    }
    Ok(None)
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), BuilderError> {
    let mut text = serde_json::to_string_pretty(value).expect("JSON serializes");
    text.push('\n');
    std::fs::write(path, text).map_err(io_err("writing the var file"))
}

/// Writes a googlecompute build's service-account key where `path` says, 0600; the file is
/// removed when the returned path is dropped, whatever the run's outcome.
fn write_key(
    ctx: &StepCtx,
    path: Option<&Path>,
) -> Result<Option<tempfile::TempPath>, BuilderError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let key = super::gcp_image::KEY_SECRET;
    let Some((_, json)) = ctx.secrets.iter().find(|(k, _)| k == key) else {
        return Err(ImageBuilderError::NoKey(key).into());
    };
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("writing the service-account key"))?;
    let written = tempfile::TempPath::try_from_path(path)
        .map_err(io_err("writing the service-account key"))?;
    f.write_all(json.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io_err("writing the service-account key"))?;
    Ok(Some(written))
}

/// `image-builder`: `make TARGET` (a `validate-…` or `build-…` target) in a staged checkout or
/// in the container; a build's packer manifest becomes facts, a qemu build's disk image its
/// `image.qcow2` output.
async fn run(ctx: &StepCtx) -> Result<StepOutput, BuilderError> {
    let install = &*ctx.image_builder;
    let template = patched_template(ctx)?;
    let inv = invocation(
        &ctx.node,
        install,
        &ctx.work,
        template.as_ref().map(|(_, rel)| rel.as_str()),
        ctx.attempt,
    )?;
    let kiln = ctx.work.join("kiln");
    std::fs::create_dir_all(&kiln).map_err(io_err("creating the work directory"))?;
    write_json(&kiln.join("vars.json"), &inv.vars)?;
    // The secrets the child gets as variables (not a key written to a file).
    let secrets: Vec<(String, String)> = ctx
        .secrets
        .iter()
        .filter(|(k, _)| inv.secrets.contains(k))
        .cloned()
        .collect();
    let _key = write_key(ctx, inv.key_file.as_deref())?;
    let output_dir = if inv.container {
        let output_dir = ctx.work.join("output");
        std::fs::create_dir_all(&output_dir).map_err(io_err("creating the output directory"))?;
        if let Some((path, _)) = &template {
            std::fs::copy(path, kiln.join("packer.json"))
                .map_err(io_err("staging the patched template"))?;
        }
        stage_merged(ctx, install, &inv.merged).await?;
        ctx.spawner
            .run_without(&inv.argv, &secrets, &inv.withheld, &ctx.work)
            .await?;
        output_dir
    } else {
        let src = source(install)?.join("images/capi");
        if !src.is_dir() {
            return Err(ImageBuilderError::NoCheckout(src).into());
        }
        let capi = ctx.work.join("capi");
        copy_into(&src, &capi).map_err(io_err("staging the image-builder checkout"))?;
        if let Some((path, rel)) = &template {
            std::fs::copy(path, capi.join(rel)).map_err(io_err("placing the patched template"))?;
        }
        for f in ctx.node.recipe.files.iter() {
            if let FileRole::Ship { to } = &f.role {
                super::command::confined(to, "a shipped file's to=")?;
                copy_into(&f.path, &capi.join(to)).map_err(io_err("copying shipped files"))?;
            }
        }
        let mut env = inv.env.clone();
        env.extend(secrets);
        ctx.spawner
            .run_without(&inv.argv, &env, &inv.withheld, &ctx.work)
            .await?;
        capi.join("output")
    };
    let mut out = StepOutput::default();
    if ctx.node.step != StepKind::Build {
        return Ok(out);
    }
    let base = if inv.container {
        ctx.work.clone()
    } else {
        ctx.work.join("capi")
    };
    let manifest = match inv.vars.get("manifest_output") {
        Some(m) => on_host(&base, &ctx.work, inv.container, m),
        None => kiln.join("manifest.json"),
    };
    if manifest.is_file() {
        let text = std::fs::read_to_string(&manifest).map_err(io_err("reading manifest.json"))?;
        out.facts = imagebuilder::manifest_facts(&text).map_err(ImageBuilderError::Manifest)?;
    } else if inv.produces.manifest {
        return Err(ImageBuilderError::NoManifest {
            target: inv
                .argv
                .last()
                .cloned()
                .unwrap_or_else(|| "the build".into()),
            manifest_output: inv.vars.get("manifest_output").cloned().unwrap_or_default(),
        }
        .into());
    }
    let semver = inv
        .vars
        .get("kubernetes_semver")
        .cloned()
        .unwrap_or_default();
    match disk_image(&base, &output_dir, &inv.vars, &semver) {
        Ok((rel, path)) => {
            out.facts.insert("image".into(), rel);
            out.outputs.push((IMAGE.into(), path));
        }
        Err(why) if inv.produces.disk => {
            return Err(ImageBuilderError::NoDisk(why).into());
        }
        Err(_) => {}
    }
    for (k, v) in &out.facts {
        ctx.spawner.log.line(&format!("fact {k}={v}"));
    }
    Ok(out)
}

/// Where a path packer was given is on this machine: relative to the tree packer runs in
/// (`base`), or, in a container, under `/home/imagebuilder` (whose `kiln/` and `output/` are the
/// work directory's).
fn on_host(base: &Path, work: &Path, container: bool, path: &str) -> PathBuf {
    match path.strip_prefix(HOME) {
        Some(rest) if container => work.join(rest.trim_start_matches('/')),
        _ => base.join(path.trim_start_matches("./")),
    }
}

/// A qemu build's disk image, where packer writes it: `<output_directory>/<vm_name>` when the
/// config sets those variables (relative to the directory packer runs in: the staged
/// `images/capi`, or the container's home, whose `output/` is the work directory's), else
/// image-builder's default `output/<build_name>-kube-<semver>/<build_name>-kube-<semver>` (or
/// the only file in that directory). The error says where it looked.
fn disk_image(
    base: &Path,
    output: &Path,
    vars: &BTreeMap<String, String>,
    semver: &str,
) -> Result<(String, PathBuf), String> {
    let (dir, vm_name) = (vars.get("output_directory"), vars.get("vm_name"));
    if dir.is_none() && vm_name.is_none() {
        return find_image(output, semver).ok_or_else(|| {
            format!(
                "no output/*-kube-{semver}/ directory with one file in {}",
                output.display()
            )
        });
    }
    let dir = match dir {
        Some(d) => base.join(d.trim_start_matches("./")),
        None => find_image(output, semver)
            .and_then(|(_, p)| p.parent().map(Path::to_path_buf))
            .ok_or_else(|| {
                format!(
                    "no output/*-kube-{semver}/ directory in {}",
                    output.display()
                )
            })?,
    };
    let file = match vm_name {
        Some(name) => dir.join(name),
        None => only_file(&dir).ok_or_else(|| format!("{} holds no single file", dir.display()))?,
    };
    if !file.is_file() {
        return Err(format!("{} does not exist", file.display()));
    }
    let rel = file
        .strip_prefix(base)
        .map(|r| r.to_string_lossy().into_owned())
        .unwrap_or_else(|_| file.to_string_lossy().into_owned());
    Ok((rel, file))
}

fn only_file(dir: &Path) -> Option<PathBuf> {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    match files.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// A qemu build's disk image under image-builder's default names:
/// `output/<build_name>-kube-<semver>/<build_name>-kube-<semver>` (or the only file in that
/// directory).
fn find_image(output: &Path, semver: &str) -> Option<(String, PathBuf)> {
    if semver.is_empty() {
        return None;
    }
    let suffix = format!("-kube-{semver}");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(output)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().ends_with(&suffix))
        })
        .collect();
    dirs.sort();
    let dir = dirs.pop()?;
    let name = dir.file_name()?.to_string_lossy().into_owned();
    let named = dir.join(&name);
    let file = if named.is_file() {
        named
    } else {
        only_file(&dir)?
    };
    let rel = format!("output/{name}/{}", file.file_name()?.to_string_lossy());
    Some((rel, file))
}
