//! `local`: the offline image builder. Build renders the cell into a root-filesystem tree, makes
//! an ext4 image of it with `mke2fs -d` (no root, no mount) and converts it to a compressed
//! qcow2; validate checks the qcow2 and reads the release file back out of it.

use std::path::{Path, PathBuf};

use super::{Builder, BuilderError, StepCtx, StepFuture, StepOutput, copy_into, io_err};
use crate::config::BuilderKind;
use crate::config::step::{BuilderSpec, Consumes, ParamSpec, ParamType, SecretUse};
use crate::config::{StepKind, Value};
use crate::graph::{FileRole, Node};
use crate::imagebuilder::Install;

/// What a `local` step takes: its parameters, and the provider inputs it receives.
pub static SPEC: BuilderSpec = BuilderSpec {
    kind: BuilderKind::Local,
    params: &[
        ParamSpec::new(
            "size",
            ParamType::Str,
            false,
            "the filesystem size, e.g. \"64M\"",
        ),
        ParamSpec::new("label", ParamType::Str, false, "the filesystem label"),
        ParamSpec::new(
            "mirrors",
            ParamType::List,
            false,
            "registry mirrors written as containerd hosts.toml files",
        ),
    ],
    consumes: Consumes {
        vars: true,
        patches: false,
        files: true,
        secrets: false,
        image_builder: false,
    },
    secrets: SecretUse::None,
};

pub struct Local;

/// How a `local` step fails beyond its programs' exit status.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("`{tool}` is not installed: install the {package} package (apt-get install {package})")]
    ToolMissing { tool: String, package: &'static str },
    #[error("mirror `{0}` is not HOST=URL (e.g. docker.io=https://mirror.example)")]
    BadMirror(String),
    #[error("the image has no /{}", RELEASE_FILE)]
    NoReleaseFile,
    #[error("/{} in the image does not match the declared versions", RELEASE_FILE)]
    ReleaseMismatch,
}

impl Builder for Local {
    fn spec(&self) -> &'static BuilderSpec {
        &SPEC
    }

    /// A validate step checks the image its build made; any other step builds one.
    fn run<'a>(&'a self, ctx: &'a StepCtx) -> StepFuture<'a> {
        match ctx.node.step {
            StepKind::Validate => Box::pin(validate(ctx)),
            _ => Box::pin(build(ctx)),
        }
    }

    /// A build step's image.
    fn produces(&self, node: &Node) -> Vec<String> {
        match node.step {
            StepKind::Validate => Vec::new(),
            _ => vec![IMAGE.into()],
        }
    }

    fn programs(&self, _node: &Node, _install: &Install) -> Vec<(String, String)> {
        vec![("qemu-img".into(), "install the qemu-utils package".into())]
    }
}

pub const IMAGE: &str = "image.qcow2";
const RELEASE_FILE: &str = "etc/image-release";
/// A fixed clock for mke2fs, so the same tree always gives the same bytes (and early cutoff
/// can see that a rebuilt image did not change).
const FAKE_TIME: &str = "1000000000";

/// The tools this builder needs, with the Debian package that provides each.
const TOOLS: [(&str, &str); 3] = [
    ("mke2fs", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
    ("qemu-img", "qemu-utils"),
];

fn find_tool(name: &str) -> Result<String, BuilderError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin", "/sbin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p.to_string_lossy().into_owned());
        }
    }
    let pkg = TOOLS
        .iter()
        .find(|(t, _)| *t == name)
        .map_or("it", |(_, p)| *p);
    Err(LocalError::ToolMissing {
        tool: name.to_string(),
        package: pkg,
    }
    .into())
}

/// `/etc/image-release`: one `name=value` line per variable, sorted.
pub fn release_file(ctx: &StepCtx) -> String {
    ctx.node
        .recipe
        .vars
        .iter()
        .map(|(k, v)| format!("{k}={}\n", v.render()))
        .collect()
}

fn hosts_toml(host: &str, mirror: &str) -> String {
    format!(
        "server = \"https://{host}\"\n\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

fn stage_tree(ctx: &StepCtx, tree: &Path) -> Result<(), BuilderError> {
    let err = io_err("staging the root filesystem");
    std::fs::create_dir_all(tree.join("etc")).map_err(&err)?;
    std::fs::write(tree.join(RELEASE_FILE), release_file(ctx)).map_err(&err)?;
    let mirrors = ctx
        .node
        .recipe
        .params
        .get("mirrors")
        .map(Value::as_list)
        .unwrap_or_default();
    for m in mirrors
        .iter()
        .flat_map(|m| m.split(','))
        .filter(|m| !m.is_empty())
    {
        let Some((host, url)) = m.split_once('=') else {
            return Err(LocalError::BadMirror(m.to_string()).into());
        };
        let dir = tree.join("etc/containerd/certs.d").join(host);
        std::fs::create_dir_all(&dir).map_err(&err)?;
        std::fs::write(dir.join("hosts.toml"), hosts_toml(host, url)).map_err(&err)?;
    }
    for f in ctx.node.recipe.files.iter() {
        if let FileRole::Ship { to } = &f.role {
            copy_into(&f.path, &tree.join(to.trim_start_matches('/'))).map_err(&err)?;
        }
    }
    set_times(tree).map_err(&err)
}

/// Every file in the tree gets the same modification time, so images are reproducible.
fn set_times(p: &Path) -> std::io::Result<()> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    if p.is_dir() {
        for e in std::fs::read_dir(p)? {
            set_times(&e?.path())?;
        }
    }
    std::fs::File::open(p)?.set_modified(t)
}

/// debugfs commands that set the ctime and atime of every inode of the tree to the fixed clock.
fn pin_times(dir: &Path, prefix: &str, out: &mut String) -> std::io::Result<()> {
    let here = if prefix.is_empty() { "/" } else { prefix };
    for field in ["ctime", "atime"] {
        out.push_str(&format!("sif \"{here}\" {field} @{FAKE_TIME}\n"));
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = format!("{prefix}/{}", e.file_name().to_string_lossy());
        if e.file_type()?.is_dir() {
            pin_times(&e.path(), &path, out)?;
        } else {
            for field in ["ctime", "atime"] {
                out.push_str(&format!("sif \"{path}\" {field} @{FAKE_TIME}\n"));
            }
        }
    }
    Ok(())
}

/// A filesystem UUID derived from the node's recipe: same inputs, same image.
fn uuid_for(ctx: &StepCtx) -> String {
    let d = ctx.node.recipe_digest.to_hex();
    format!(
        "{}-{}-4{}-8{}-{}",
        &d[0..8],
        &d[8..12],
        &d[13..16],
        &d[17..20],
        &d[20..32]
    )
}

async fn build(ctx: &StepCtx) -> Result<StepOutput, BuilderError> {
    let mke2fs = find_tool("mke2fs")?;
    let qemu_img = find_tool("qemu-img")?;
    let tree = ctx.work.join("rootfs");
    stage_tree(ctx, &tree)?;
    let p = &ctx.node.recipe.params;
    let size = p.get("size").map_or("32M".into(), Value::render);
    let label = p.get("label").map_or("kiln".into(), Value::render);
    let uuid = uuid_for(ctx);
    let raw = ctx.work.join("image.raw");
    let qcow2 = ctx.work.join(IMAGE);
    let s = |x: &str| x.to_string();
    let env = vec![(s("E2FSPROGS_FAKE_TIME"), s(FAKE_TIME))];
    let mkfs = [
        mke2fs,
        s("-q"),
        s("-F"),
        s("-t"),
        s("ext4"),
        s("-d"),
        tree.to_string_lossy().into_owned(),
        s("-L"),
        label,
        s("-U"),
        uuid.clone(),
        s("-E"),
        format!("root_owner=0:0,hash_seed={uuid}"),
        raw.to_string_lossy().into_owned(),
        size,
    ];
    ctx.spawner.run(&mkfs, &env, &ctx.work).await?;
    // mke2fs copies each source file's ctime and atime, which the host moves on: pin them inside
    // the image so the same tree always gives the same bytes.
    let mut script = String::new();
    pin_times(&tree, "", &mut script).map_err(io_err("listing the root filesystem"))?;
    let script_path = ctx.work.join("pin-times.debugfs");
    std::fs::write(&script_path, script).map_err(io_err("writing the debugfs script"))?;
    let debugfs = find_tool("debugfs")?;
    let pin = [
        debugfs,
        s("-w"),
        s("-f"),
        script_path.to_string_lossy().into_owned(),
        raw.to_string_lossy().into_owned(),
    ];
    ctx.spawner.run(&pin, &env, &ctx.work).await?;
    let convert = [
        qemu_img,
        s("convert"),
        s("-c"),
        s("-O"),
        s("qcow2"),
        raw.to_string_lossy().into_owned(),
        qcow2.to_string_lossy().into_owned(),
    ];
    ctx.spawner.run(&convert, &[], &ctx.work).await?;
    std::fs::remove_file(&raw).map_err(io_err("removing the raw image"))?;
    let mut out = StepOutput::default();
    out.facts.insert("format".into(), "qcow2".into());
    out.outputs.push((IMAGE.into(), qcow2));
    Ok(out)
}

async fn validate(ctx: &StepCtx) -> Result<StepOutput, BuilderError> {
    let qemu_img = find_tool("qemu-img")?;
    let debugfs = find_tool("debugfs")?;
    // qemu-img and debugfs get a copy: nothing they do reaches the stored image.
    let image = ctx.upstream_copy(IMAGE)?;
    let s = |x: &str| x.to_string();
    let path = |p: &Path| p.to_string_lossy().into_owned();
    ctx.spawner
        .run(
            &[qemu_img.clone(), s("check"), path(&image)],
            &[],
            &ctx.work,
        )
        .await?;
    let raw = ctx.work.join("check.raw");
    ctx.spawner
        .run(
            &[
                qemu_img,
                s("convert"),
                s("-O"),
                s("raw"),
                path(&image),
                path(&raw),
            ],
            &[],
            &ctx.work,
        )
        .await?;
    let dumped = ctx.work.join("image-release");
    let cmd = format!("dump /{RELEASE_FILE} {}", dumped.display());
    ctx.spawner
        .run(&[debugfs, s("-R"), cmd, path(&raw)], &[], &ctx.work)
        .await?;
    let found = std::fs::read_to_string(&dumped).map_err(|_| LocalError::NoReleaseFile)?;
    let expected = release_file(ctx);
    if found != expected {
        for (want, got) in expected
            .lines()
            .zip(found.lines().chain(std::iter::repeat("")))
        {
            if want != got {
                ctx.spawner
                    .log
                    .line(&format!("mismatch: expected `{want}`, image has `{got}`"));
            }
        }
        return Err(LocalError::ReleaseMismatch.into());
    }
    ctx.spawner
        .log
        .line(&format!("/{RELEASE_FILE} matches the declared versions"));
    let mut out = StepOutput::default();
    out.facts.insert("release".into(), "verified".into());
    Ok(out)
}
