//! A KubeSchedulerConfiguration-style file: profiles by `schedulerName`, plugins enabled and
//! disabled per extension point (or `multiPoint`), score weights, and per-plugin args.
//!
//! ```yaml
//! apiVersion: kubescheduler.config.k8s.io/v1
//! kind: KubeSchedulerConfiguration
//! parallelism: 2
//! profiles:
//! - schedulerName: bin-packing
//!   plugins:
//!     score:
//!       disabled: [{name: NodeResourcesBalancedAllocation}]
//!       enabled: [{name: NodeResourcesFit, weight: 5}]
//!   pluginConfig:
//!   - name: NodeResourcesFit
//!     args: {scoringStrategy: {type: MostAllocated}}
//! ```

use std::sync::Arc;

use serde::Deserialize;

use crate::Error;
use crate::framework::{Framework, Plugin};
use crate::plugins;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// Ignored (accepted for compatibility).
    #[serde(default)]
    pub api_version: Option<String>,
    /// Ignored (accepted for compatibility).
    #[serde(default)]
    pub kind: Option<String>,
    /// Worker threads of the batch cycle (default: available cores).
    #[serde(default)]
    pub parallelism: Option<usize>,
    /// Pods evaluated together (kubeshard extension; default 256).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// The profiles (default: one `default-scheduler` profile with the default plugins).
    #[serde(default)]
    pub profiles: Vec<Profile>,
}

/// One profile.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// The `spec.schedulerName` served (default-scheduler when unset).
    #[serde(default)]
    pub scheduler_name: Option<String>,
    /// Plugin sets per extension point.
    #[serde(default)]
    pub plugins: Plugins,
    /// Per-plugin args.
    #[serde(default)]
    pub plugin_config: Vec<PluginConfig>,
}

/// Plugin sets per extension point.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct Plugins {
    #[serde(default)]
    pub multi_point: PluginSet,
    #[serde(default)]
    pub pre_filter: PluginSet,
    #[serde(default)]
    pub filter: PluginSet,
    #[serde(default)]
    pub post_filter: PluginSet,
    #[serde(default)]
    pub pre_score: PluginSet,
    #[serde(default)]
    pub score: PluginSet,
    #[serde(default)]
    pub reserve: PluginSet,
    #[serde(default)]
    pub permit: PluginSet,
    #[serde(default)]
    pub pre_bind: PluginSet,
    #[serde(default)]
    pub bind: PluginSet,
}

/// Enabled and disabled plugins of one extension point.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PluginSet {
    /// Added after the defaults, in order.
    #[serde(default)]
    pub enabled: Vec<PluginRef>,
    /// Removed from the defaults; `*` removes them all.
    #[serde(default)]
    pub disabled: Vec<PluginRef>,
}

/// A plugin by name, with a score weight.
#[derive(Debug, Clone, Deserialize)]
pub struct PluginRef {
    /// Plugin name.
    pub name: String,
    /// Score weight (score and multiPoint only).
    #[serde(default)]
    pub weight: Option<i64>,
}

/// Args of one plugin.
#[derive(Debug, Clone, Deserialize)]
pub struct PluginConfig {
    /// Plugin name.
    pub name: String,
    /// Its args object.
    #[serde(default)]
    pub args: serde_json::Value,
}

impl Config {
    /// Parses the YAML (or JSON) text of a configuration file.
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        if text.len() > 1 << 20 {
            return Err(Error::Config("configuration larger than 1 MiB".into()));
        }
        serde_yaml::from_str(text).map_err(|e| Error::Config(e.to_string()))
    }
}

fn apply(list: &mut Vec<(String, i64)>, set: &PluginSet) {
    for d in &set.disabled {
        if d.name == "*" {
            list.clear();
        } else {
            list.retain(|(n, _)| *n != d.name);
        }
    }
    for e in &set.enabled {
        let w = e.weight.unwrap_or(0);
        if let Some(x) = list.iter_mut().find(|(n, _)| *n == e.name) {
            if w != 0 {
                x.1 = w;
            }
        } else {
            list.push((e.name.clone(), w));
        }
    }
}

/// Builds one `Framework` per profile (a default profile when the file has none).
pub fn build_profiles(cfg: &Config) -> Result<Vec<Framework>, Error> {
    let default_profile = [Profile::default()];
    let profiles: &[Profile] = if cfg.profiles.is_empty() {
        &default_profile
    } else {
        &cfg.profiles
    };
    let mut out: Vec<Framework> = Vec::new();
    for p in profiles {
        let name = p
            .scheduler_name
            .clone()
            .unwrap_or_else(|| "default-scheduler".into());
        if out.iter().any(|f| f.scheduler_name == name) {
            return Err(Error::Config(format!("duplicate profile {name:?}")));
        }
        let mut multi: Vec<(String, i64)> = plugins::DEFAULT_PLUGINS
            .iter()
            .map(|(n, w)| (n.to_string(), *w))
            .collect();
        apply(&mut multi, &p.plugins.multi_point);
        // Every plugin named anywhere is built once, in multiPoint order then the rest.
        let mut names: Vec<String> = multi.iter().map(|(n, _)| n.clone()).collect();
        let sets = [
            &p.plugins.pre_filter,
            &p.plugins.filter,
            &p.plugins.post_filter,
            &p.plugins.pre_score,
            &p.plugins.score,
            &p.plugins.reserve,
            &p.plugins.permit,
            &p.plugins.pre_bind,
            &p.plugins.bind,
        ];
        for s in sets {
            for e in &s.enabled {
                if !names.contains(&e.name) {
                    names.push(e.name.clone());
                }
            }
        }
        for pc in &p.plugin_config {
            if !names.contains(&pc.name) && plugins::build(&pc.name, None).is_err() {
                return Err(Error::Config(format!(
                    "pluginConfig for unknown plugin {:?}",
                    pc.name
                )));
            }
        }
        let mut built: Vec<Arc<dyn Plugin>> = Vec::new();
        for n in &names {
            let args = p
                .plugin_config
                .iter()
                .find(|c| c.name == *n)
                .map(|c| &c.args);
            built.push(plugins::build(n, args)?);
        }
        let slot = |n: &str| names.iter().position(|x| x == n);
        let point = |set: &PluginSet,
                     has: &dyn Fn(&dyn Plugin) -> bool|
         -> Result<Vec<(usize, i64)>, Error> {
            let mut list: Vec<(String, i64)> = multi
                .iter()
                .filter(|(n, _)| slot(n).is_some_and(|i| has(&*built[i])))
                .cloned()
                .collect();
            apply(&mut list, set);
            list.into_iter()
                .map(|(n, w)| {
                    let i =
                        slot(&n).ok_or_else(|| Error::Config(format!("unknown plugin {n:?}")))?;
                    if !has(&*built[i]) {
                        return Err(Error::Config(format!(
                            "{n} does not implement this extension point"
                        )));
                    }
                    Ok((i, w))
                })
                .collect()
        };
        let ids = |v: Vec<(usize, i64)>| v.into_iter().map(|(i, _)| i).collect::<Vec<_>>();
        let mut score = point(&p.plugins.score, &|pl| pl.as_score().is_some())?;
        for (_, w) in &mut score {
            if *w <= 0 {
                *w = 1;
            }
        }
        out.push(Framework {
            scheduler_name: name,
            pre_filter: ids(point(&p.plugins.pre_filter, &|pl| {
                pl.as_pre_filter().is_some()
            })?),
            filter: ids(point(&p.plugins.filter, &|pl| pl.as_filter().is_some())?),
            post_filter: ids(point(&p.plugins.post_filter, &|pl| {
                pl.as_post_filter().is_some()
            })?),
            pre_score: ids(point(&p.plugins.pre_score, &|pl| {
                pl.as_pre_score().is_some()
            })?),
            score,
            reserve: ids(point(&p.plugins.reserve, &|pl| pl.as_reserve().is_some())?),
            permit: ids(point(&p.plugins.permit, &|pl| pl.as_permit().is_some())?),
            pre_bind: ids(point(&p.plugins.pre_bind, &|pl| {
                pl.as_pre_bind().is_some()
            })?),
            bind: ids(point(&p.plugins.bind, &|pl| pl.as_bind().is_some())?),
            plugins: built,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(fw: &Framework, v: &[usize]) -> Vec<&'static str> {
        v.iter().map(|&i| fw.plugins[i].name()).collect()
    }

    #[test]
    fn default_profile_matches_upstream_weights() {
        let fws = build_profiles(&Config::default()).unwrap();
        assert_eq!(fws.len(), 1);
        let fw = &fws[0];
        assert_eq!(fw.scheduler_name, "default-scheduler");
        let w: Vec<(&str, i64)> = fw
            .score
            .iter()
            .map(|&(i, w)| (fw.plugins[i].name(), w))
            .collect();
        assert_eq!(
            w,
            [
                ("TaintToleration", 3),
                ("NodeAffinity", 2),
                ("NodeResourcesFit", 1),
                ("PodTopologySpread", 2),
                ("InterPodAffinity", 2),
                ("NodeResourcesBalancedAllocation", 1),
                ("ImageLocality", 1)
            ]
        );
        assert_eq!(
            names(fw, &fw.filter),
            [
                "NodeUnschedulable",
                "NodeName",
                "TaintToleration",
                "NodeAffinity",
                "NodePorts",
                "NodeResourcesFit",
                "VolumeRestrictions",
                "PodTopologySpread",
                "InterPodAffinity"
            ]
        );
        assert_eq!(names(fw, &fw.post_filter), ["DefaultPreemption"]);
    }

    #[test]
    fn enable_disable_weights_and_args() {
        let cfg = Config::from_yaml(
            r#"
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: default-scheduler
- schedulerName: packer
  plugins:
    score:
      disabled: [{name: NodeResourcesBalancedAllocation}, {name: ImageLocality}]
      enabled: [{name: NodeResourcesFit, weight: 5}]
    filter:
      disabled: [{name: NodePorts}]
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy: {type: MostAllocated}
- schedulerName: only-fit
  plugins:
    multiPoint:
      disabled: [{name: "*"}]
      enabled: [{name: NodeResourcesFit}]
"#,
        )
        .unwrap();
        let fws = build_profiles(&cfg).unwrap();
        assert_eq!(fws.len(), 3);
        let packer = &fws[1];
        let w: Vec<(&str, i64)> = packer
            .score
            .iter()
            .map(|&(i, w)| (packer.plugins[i].name(), w))
            .collect();
        assert!(w.contains(&("NodeResourcesFit", 5)));
        assert!(
            !w.iter()
                .any(|(n, _)| *n == "ImageLocality" || *n == "NodeResourcesBalancedAllocation")
        );
        assert!(!names(packer, &packer.filter).contains(&"NodePorts"));
        let only = &fws[2];
        assert_eq!(names(only, &only.filter), ["NodeResourcesFit"]);
        assert!(only.post_filter.is_empty());
        // Errors: unknown plugin, bad args, a plugin at a point it does not implement.
        for bad in [
            "profiles: [{plugins: {filter: {enabled: [{name: Nope}]}}}]",
            "profiles: [{pluginConfig: [{name: NodeResourcesFit, args: {scoringStrategy: {type: Weird}}}]}]",
            "profiles: [{plugins: {score: {enabled: [{name: NodePorts}]}}}]",
            "profiles: [{schedulerName: a}, {schedulerName: a}]",
        ] {
            let r = Config::from_yaml(bad).and_then(|c| build_profiles(&c));
            assert!(r.is_err(), "{bad}");
        }
    }
}
