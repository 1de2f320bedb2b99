//! Scenario files (`examples/*.toml`): who applies, how fast, who approves, what
//! breaks and when, and what must hold at the end.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seed of the random choices, so that a run can be repeated.
    #[serde(default = "default_seed")]
    pub seed: u64,
    pub arrivals: Arrivals,
    pub profiles: Vec<Profile>,
    #[serde(default)]
    pub approvers: Option<Approvers>,
    #[serde(default)]
    pub faults: Vec<Fault>,
    pub expect: Expect,
}

fn default_seed() -> u64 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arrivals {
    /// Applications in all (bursts included).
    pub count: usize,
    /// Steady arrival rate.
    pub per_second: f64,
    /// Extra applications arriving at once at a moment of the run.
    #[serde(default)]
    pub bursts: Vec<Burst>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Burst {
    pub at_s: f64,
    pub count: usize,
}

/// A kind of applicant; each application picks a profile by weight.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub weight: u32,
    /// The sandbox score (300–850) the bureau will report.
    #[serde(default = "default_score")]
    pub score: u16,
    /// Overrides the sandbox identity (e.g. `SANCTIONED1`).
    #[serde(default)]
    pub national_id: Option<String>,
    #[serde(default = "default_age")]
    pub age_years: u32,
    pub annual_income: String,
    pub monthly_debts: String,
    /// Amounts are drawn uniformly, in whole dollars, from this range.
    pub amount_min: u64,
    pub amount_max: u64,
    pub terms: Vec<u16>,
}

fn default_score() -> u16 {
    720
}

fn default_age() -> u32 {
    35
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approvers {
    pub count: usize,
    /// Share of decisions that approve (0–1).
    pub approve_share: f64,
    /// How long a person looks at an application before deciding.
    pub think_ms: u64,
    /// The approvers' bearer tokens, one person each (the sandbox's two manager
    /// approvers by default): approver `n` signs in with the `n`-th, round the list.
    /// Distinct people, so that a case under dual control gets its second approval.
    #[serde(default = "default_tokens")]
    pub tokens: Vec<String>,
}

fn default_tokens() -> Vec<String> {
    vec!["sandbox-manager-token".to_owned(), "sandbox-manager-token-2".to_owned()]
}

/// A bureau fault from `at_s` to `until_s` seconds into the run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub at_s: f64,
    pub until_s: f64,
    #[serde(default)]
    pub bureau_down: bool,
    #[serde(default)]
    pub bureau_latency_ms: u64,
}

/// What must hold at the end for the run to pass (exit code 0).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Every application final within this many seconds of the first submission.
    pub all_final_within_s: f64,
    #[serde(default)]
    pub max_failed: usize,
    #[serde(default)]
    pub min_approved: usize,
    #[serde(default)]
    pub min_rejected: usize,
    /// Statuses that must each appear at least once among the final ones.
    #[serde(default)]
    pub outcomes_seen: Vec<String>,
    #[serde(default)]
    pub max_submit_p99_ms: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: {1}")]
    Parse(String, toml::de::Error),
    #[error("{0}: {1}")]
    Invalid(String, String),
}

impl Scenario {
    pub fn load(path: &std::path::Path) -> Result<Scenario, ScenarioError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Read(name.clone(), e))?;
        Scenario::parse(&name, &text)
    }

    pub fn parse(name: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse(name.to_owned(), e))?;
        let invalid = |why: &str| Err(ScenarioError::Invalid(name.to_owned(), why.to_owned()));
        if scenario.profiles.is_empty() || scenario.profiles.iter().all(|p| p.weight == 0) {
            return invalid("at least one profile with a weight above 0 is needed");
        }
        if scenario.arrivals.per_second <= 0.0 {
            return invalid("arrivals.per_second must be above 0");
        }
        if scenario.profiles.iter().any(|p| p.amount_min > p.amount_max || p.terms.is_empty()) {
            return invalid("each profile needs amount_min <= amount_max and at least one term");
        }
        if scenario.arrivals.bursts.iter().map(|b| b.count).sum::<usize>() > scenario.arrivals.count {
            return invalid("bursts hold more applications than arrivals.count");
        }
        Ok(scenario)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_scenario_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
                seen += 1;
            }
        }
        assert!(seen >= 4, "smoke, busy-day, bureau-outage and big-tickets at least");
    }

    #[test]
    fn nonsense_is_refused_with_the_reason() {
        let base = r#"name = "x"
profiles = []
[arrivals]
count = 1
per_second = 1.0
[expect]
all_final_within_s = 1.0
"#;
        assert!(matches!(Scenario::parse("x", base), Err(ScenarioError::Invalid(..))), "no profiles");
        let typo = base.replace("per_second", "per_secnd");
        assert!(matches!(Scenario::parse("x", &typo), Err(ScenarioError::Parse(..))), "a misspelt key");
    }
}
