//! `upload`: copies the image and its `.sha256` into a bucket; skipped when the same digest is
//! already there. `file://` buckets are directories (relative ones resolve against the config
//! root); the object appears atomically, the checksum after the image.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::{StepCtx, StepOutput, io_err, local::IMAGE};
use crate::config::Value;
use crate::exec::process::StepError;

fn sha256_file(p: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn atomic_write(
    dest: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    write(tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    // Published objects are readable like any file a user copies; temp files start as 0600.
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    tmp.persist(dest).map_err(|e| e.error)?;
    Ok(())
}

fn bucket_dir(ctx: &StepCtx, bucket: &str) -> Result<PathBuf, StepError> {
    match bucket.strip_prefix("file://") {
        Some(p) if Path::new(p).is_absolute() => Ok(PathBuf::from(p)),
        Some(p) => Ok(ctx.root.join(p)),
        None => Err(StepError::Failed(format!(
            "bucket `{bucket}`: this version of kiln uploads to file:// buckets only"
        ))),
    }
}

pub async fn run(ctx: &StepCtx) -> Result<StepOutput, StepError> {
    let p = &ctx.node.recipe.params;
    let bucket = p.get("bucket").map(Value::render).unwrap_or_default();
    let checksum = !matches!(p.get("checksum"), Some(Value::Bool(false)));
    let name = match p.get("object").map(Value::render) {
        Some(n) if !n.is_empty() => n,
        _ => format!("{}.qcow2", ctx.node.cells[0]),
    };
    let image = ctx.upstream_file(IMAGE)?;
    let dir = bucket_dir(ctx, &bucket)?;
    let dest = dir.join(&name);
    let sum = sha256_file(&image).map_err(io_err("hashing the image"))?;
    let sum_path = dir.join(format!("{name}.sha256"));
    let mut out = StepOutput::default();
    out.facts.insert(
        "url".into(),
        format!("{}/{name}", bucket.trim_end_matches('/')),
    );
    out.facts.insert("sha256".into(), sum.clone());
    let line = format!("{sum}  {name}\n");
    if std::fs::read_to_string(&sum_path).ok().as_deref() == Some(line.as_str())
        && sha256_file(&dest).ok().as_deref() == Some(sum.as_str())
    {
        ctx.spawner.log.line(&format!(
            "{} already holds {name} with sha256 {sum}; skipped",
            bucket
        ));
        out.facts.insert("skipped".into(), "true".into());
        return Ok(out);
    }
    let err = io_err("uploading");
    atomic_write(&dest, |f| {
        let mut src = std::fs::File::open(&image)?;
        std::io::copy(&mut src, f).map(|_| ())
    })
    .map_err(&err)?;
    if checksum {
        atomic_write(&sum_path, |f| f.write_all(line.as_bytes())).map_err(&err)?;
    }
    ctx.spawner
        .log
        .line(&format!("uploaded {name} (sha256 {sum}) to {bucket}"));
    Ok(out)
}
