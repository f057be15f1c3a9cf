//! `kiln init [--provider NAME]`: a starter `images.kdl` and the provider module it imports,
//! which `kiln check` accepts as written. The modules are the ones this kiln ships.

use std::path::Path;

use clap::ValueEnum;

use super::CliError;

/// The providers kiln ships a module for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Provider {
    /// Offline: small ext4 images in qcow2 into `images/`, no cloud and no credentials.
    Local,
    Aws,
    Gcp,
    Openstack,
    Hcloud,
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::Local => "local",
            Provider::Aws => "aws",
            Provider::Gcp => "gcp",
            Provider::Openstack => "openstack",
            Provider::Hcloud => "hcloud",
        }
    }

    fn module(self) -> &'static str {
        match self {
            Provider::Local => include_str!("../../modules/local.kdl"),
            Provider::Aws => include_str!("../../modules/aws.kdl"),
            Provider::Gcp => include_str!("../../modules/gcp.kdl"),
            Provider::Openstack => include_str!("../../modules/openstack.kdl"),
            Provider::Hcloud => include_str!("../../modules/hcloud.kdl"),
        }
    }

    /// The operating systems image-builder builds for it.
    fn oses(self) -> &'static [&'static str] {
        match self {
            Provider::Local | Provider::Aws => &["ubuntu-2404", "flatcar"],
            Provider::Gcp => &["ubuntu-2204", "ubuntu-2404"],
            Provider::Openstack | Provider::Hcloud => &["ubuntu-2404"],
        }
    }

    /// The provider node: its settings and the secrets its publish step needs.
    fn block(self) -> &'static str {
        match self {
            Provider::Local => {
                "// Images and their .sha256 land in images/ beside this file.\nprovider \"local\" {\n    bucket \"file://images\"\n}\n"
            }
            Provider::Aws => {
                "// AMIs are copied to these regions and made public.\nprovider \"aws\" {\n    regions \"us-east-1\" \"eu-central-1\"\n    env \"FLATCAR_VERSION\" \"4152.2.3\" // Flatcar's release, else looked up at build time\n    secret \"AWS_ACCESS_KEY_ID\"\n    secret \"AWS_SECRET_ACCESS_KEY\"\n}\n"
            }
            Provider::Gcp => {
                "// Images are shared with all authenticated users.\nprovider \"gcp\" {\n    project \"my-gcp-project\"\n    secret \"GOOGLE_APPLICATION_CREDENTIALS_JSON\" env=\"GCP_SERVICE_ACCOUNT_JSON\"\n}\n"
            }
            Provider::Openstack => {
                "// qcow2 images uploaded with their sha256.\nprovider \"openstack\" {\n    bucket \"s3://my-image-bucket\"\n    secret \"AWS_ACCESS_KEY_ID\" env=\"S3_ACCESS_KEY_ID\"\n    secret \"AWS_SECRET_ACCESS_KEY\" env=\"S3_SECRET_ACCESS_KEY\"\n}\n"
            }
            Provider::Hcloud => {
                "// Snapshots in this location, labelled with the Kubernetes version and OS.\nprovider \"hcloud\" {\n    location \"fsn1\"\n    secret \"HCLOUD_TOKEN\"\n}\n"
            }
        }
    }
}

/// The starter config for `provider`.
pub fn starter(provider: Provider) -> String {
    let name = provider.name();
    let oses: Vec<String> = provider.oses().iter().map(|o| format!("\"{o}\"")).collect();
    let tool = if provider == Provider::Local {
        ""
    } else {
        "\n// The image-builder release the templates and make targets come from.\ntool \"image-builder\" \"v0.1.55\"\n"
    };
    let revision = if provider == Provider::Local {
        ""
    } else {
        "    revision \"1.1\"\n"
    };
    format!(
        r#"// The image matrix: `kiln check` validates it, `kiln plan` shows what a build would do,
// `kiln build` builds. docs/config.md describes every node.
import "modules/{name}.kdl"
{tool}
kubernetes "1.31" {{
    version "1.31.4"
{revision}    cni "v1.9.0"
    containerd "2.2.0"
    crictl "1.31.1"
    runc "1.2.3"
}}

matrix "images" {{
    kubernetes "1.31"
    provider "{name}"
    os {oses}
}}

{block}"#,
        oses = oses.join(" "),
        block = provider.block(),
    )
}

/// Writes the starter config to `file` and its module to `modules/` beside it; refuses to
/// overwrite either.
pub fn run(file: &Path, provider: Provider) -> Result<(), CliError> {
    let dir = file.parent().unwrap_or(Path::new(""));
    let module = dir.join("modules").join(format!("{}.kdl", provider.name()));
    for path in [file, module.as_path()] {
        if path.exists() {
            return Err(CliError::Failed(format!(
                "{} exists already; kiln init writes only new files (move it away, or give another config path with -f)",
                path.display()
            )));
        }
    }
    let write = |path: &Path, text: &str| {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                CliError::Failed(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        std::fs::write(path, text)
            .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", path.display())))
    };
    write(file, &starter(provider))?;
    write(&module, provider.module())?;
    println!(
        "wrote {} and {}; next: `kiln -f {} check`, then `kiln -f {} plan`",
        file.display(),
        module.display(),
        file.display(),
        file.display()
    );
    Ok(())
}
