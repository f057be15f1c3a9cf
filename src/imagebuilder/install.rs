//! Where image-builder is when a step runs: a checkout or a container image, the engine that
//! runs it, and what its children must not inherit. Not part of any key.

use std::path::PathBuf;

/// How the image-builder runner reaches image-builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// `make -C <source>/images/capi TARGET` in a local checkout.
    Make,
    Docker,
    Podman,
}

impl Engine {
    pub fn parse(s: &str) -> Option<Engine> {
        match s {
            "make" => Some(Engine::Make),
            "docker" => Some(Engine::Docker),
            "podman" => Some(Engine::Podman),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Make => "make",
            Engine::Docker => "docker",
            Engine::Podman => "podman",
        }
    }
}

/// Where image-builder is at run time. Not part of any key: both engines give the same result.
#[derive(Debug, Clone, Default)]
pub struct Install {
    /// A checkout of kubernetes-sigs/image-builder (the directory holding `images/capi`).
    pub source: Option<PathBuf>,
    /// The container image, pinned by digest.
    pub image: Option<String>,
    /// `engine=`; by default `make` with a source, else `docker` with an image.
    pub engine: Option<Engine>,
    /// Every secret of the config, by the name steps see and by the variable it is read from:
    /// a step's programs inherit kiln's environment without those that are not the step's own.
    pub withheld: Vec<String>,
}

/// The error of a step that cannot reach image-builder.
pub const NOT_SET_UP: &str = "image-builder is not set up: give `tool \"image-builder\" …` a source=\"PATH\" (a checkout of kubernetes-sigs/image-builder) or an image=\"REF@sha256:…\", or pass --image-builder-source PATH / --image-builder-image REF (KILN_IMAGE_BUILDER_SOURCE / KILN_IMAGE_BUILDER_IMAGE)";
pub const NO_SOURCE: &str = "engine \"make\" needs a checkout of kubernetes-sigs/image-builder: `source=\"PATH\"` on `tool \"image-builder\"`, --image-builder-source PATH or KILN_IMAGE_BUILDER_SOURCE";
pub const NO_IMAGE: &str = "engines \"docker\" and \"podman\" need image-builder's container image: `image=\"REF@sha256:…\"` on `tool \"image-builder\"`, --image-builder-image REF or KILN_IMAGE_BUILDER_IMAGE";

impl Install {
    /// How the config says to run image-builder (`tool "image-builder" …`).
    pub fn from_config(config: &crate::config::Config) -> Install {
        let mut install = config
            .tools
            .get("image-builder")
            .map(|t| Install {
                source: t.source.clone(),
                image: t.image.clone(),
                engine: t.engine,
                withheld: Vec::new(),
            })
            .unwrap_or_default();
        let mut withheld = std::collections::BTreeSet::new();
        for p in config.providers.values() {
            for body in std::iter::once(&p.body).chain(p.overrides.iter().map(|o| &o.body)) {
                for s in &body.secrets {
                    withheld.insert(s.name.clone());
                    if let crate::config::SecretSource::Env(var) = &s.source {
                        withheld.insert(var.clone());
                    }
                }
            }
        }
        install.withheld = withheld.into_iter().collect();
        install
    }

    /// Where the command line or the environment says image-builder is, over the config:
    /// a checkout (`--image-builder-source`, relative to the current directory) or a container
    /// image (`--image-builder-image`). Either one alone decides the engine, unless the config
    /// names one.
    pub fn with_overrides(mut self, source: Option<PathBuf>, image: Option<String>) -> Install {
        match (source, image) {
            (Some(s), Some(i)) => {
                self.source = Some(s);
                self.image = Some(i);
            }
            (Some(s), None) => {
                self.source = Some(s);
                if self.engine.is_none() {
                    self.engine = Some(Engine::Make);
                }
            }
            (None, Some(i)) => {
                self.image = Some(i);
                if self.engine.is_none() && self.source.is_some() {
                    self.engine = Some(Engine::Docker);
                }
            }
            (None, None) => {}
        }
        self
    }

    pub fn engine(&self) -> Option<Engine> {
        self.engine.or(if self.source.is_some() {
            Some(Engine::Make)
        } else if self.image.is_some() {
            Some(Engine::Docker)
        } else {
            None
        })
    }
}
