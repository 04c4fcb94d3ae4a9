//! The routing table: which owner answers which `model` id, and the key and
//! browser rules that guard them. The daemon publishes a new table after
//! every applied reload; the proxy and the status API take one snapshot per
//! request, so a request never sees new routes under an old key.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::supervisor::InstanceHandle;

#[derive(Clone, Debug, Default)]
pub struct Routes {
    /// Every enabled model by name.
    pub models: BTreeMap<String, RouteEntry>,
    /// Names and aliases to model names.
    pub ids: BTreeMap<String, String>,
    /// The model that gets requests naming none.
    pub default: Option<String>,
    /// What browsers may do, from the same spec as the table; the status
    /// API follows it too.
    pub browser: crate::spec::BrowserAccess,
    /// The API key every route but the health checks requires.
    pub key: crate::http::auth::ApiKey,
}

#[derive(Clone, Debug)]
pub struct RouteEntry {
    pub handle: InstanceHandle,
    pub aliases: Vec<String>,
    pub on_demand: bool,
    /// An on-demand model stops after this long without requests.
    pub idle_timeout: Option<std::time::Duration>,
}

impl Routes {
    /// The owner answering `id` (a name or an alias).
    pub fn lookup(&self, id: &str) -> Option<&RouteEntry> {
        self.ids.get(id).and_then(|name| self.models.get(name))
    }

    /// The model for a request that names none: the declared default, or
    /// the only model.
    pub fn fallback(&self) -> Option<&RouteEntry> {
        match &self.default {
            Some(name) => self.models.get(name),
            None if self.models.len() == 1 => self.models.values().next(),
            None => None,
        }
    }

    /// Every id a client may use, sorted.
    pub fn all_ids(&self) -> Vec<String> {
        self.ids.keys().cloned().collect()
    }
}

pub type SharedRoutes = tokio::sync::watch::Receiver<Arc<Routes>>;
