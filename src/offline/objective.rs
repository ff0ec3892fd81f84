//! What the business optimises: a slot's reward is `clicks·click + value·value`, with
//! `value` the logs' per-slot `values` column (e.g. GMV). Every offline stage (the
//! evaluator, mining, soft targets, baselines, the comparison and the publish gate) reads
//! the same objective, and every report and manifest names it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Weights of the two per-slot rewards the logs carry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Objective {
    pub clicks: f64,
    pub value: f64,
}

impl Objective {
    /// Expected clicks.
    pub const CLICKS: Objective = Objective {
        clicks: 1.0,
        value: 0.0,
    };
    /// Expected value (the `values` column, e.g. GMV).
    pub const VALUE: Objective = Objective {
        clicks: 0.0,
        value: 1.0,
    };

    /// Value when the logs carry values to learn, else clicks
    /// ([`crate::offline::logs::LogShape::default_objective`] decides which).
    pub fn default_for(has_values: bool) -> Objective {
        if has_values {
            Objective::VALUE
        } else {
            Objective::CLICKS
        }
    }

    pub fn uses_value(&self) -> bool {
        self.value != 0.0
    }

    /// A slot's reward given its click and (if logged) its value.
    pub fn reward(&self, click: bool, value: Option<f32>) -> f64 {
        let click = f64::from(u8::from(click));
        self.clicks * click + self.value * value.map_or(0.0, f64::from)
    }

    /// The reward of a click worth `value_given_click`.
    pub fn reward_of_click(&self, value_given_click: f64) -> f64 {
        self.clicks + self.value * value_given_click
    }
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.clicks, self.value) {
            (c, v) if c == 1.0 && v == 0.0 => write!(f, "clicks"),
            (c, v) if c == 0.0 && v == 1.0 => write!(f, "value"),
            (c, v) => write!(f, "{c}*clicks+{v}*value"),
        }
    }
}

impl FromStr for Objective {
    type Err = String;

    /// `clicks`, `value`, or a weighted sum `A*clicks+B*value` (weights ≥ 0, not both 0).
    fn from_str(s: &str) -> Result<Objective, String> {
        let bad = || format!("objective {s:?}: expected `clicks`, `value` or `A*clicks+B*value`");
        let objective = match s.trim() {
            "clicks" => Objective::CLICKS,
            "value" => Objective::VALUE,
            other => {
                let mut objective = Objective {
                    clicks: 0.0,
                    value: 0.0,
                };
                for term in other.split('+') {
                    let (weight, name) = term.trim().split_once('*').ok_or_else(bad)?;
                    let weight: f64 = weight.trim().parse().map_err(|_| bad())?;
                    match name.trim() {
                        "clicks" => objective.clicks += weight,
                        "value" => objective.value += weight,
                        _ => return Err(bad()),
                    }
                }
                objective
            }
        };
        let weights = [objective.clicks, objective.value];
        if weights.iter().any(|w| !w.is_finite() || *w < 0.0) || weights == [0.0, 0.0] {
            return Err(format!(
                "objective {s:?}: weights must be finite, >= 0 and not both 0"
            ));
        }
        Ok(objective)
    }
}

impl Serialize for Objective {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Objective {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_weighted_sums_and_prints_them_back() {
        assert_eq!("clicks".parse(), Ok(Objective::CLICKS));
        assert_eq!("value".parse(), Ok(Objective::VALUE));
        let mixed: Objective = "0.5*clicks + 2*value".parse().unwrap();
        assert_eq!((mixed.clicks, mixed.value), (0.5, 2.0));
        assert_eq!(mixed.to_string().parse(), Ok(mixed));
        for bad in [
            "",
            "gmv",
            "clicks+value",
            "-1*clicks",
            "0*clicks+0*value",
            "x*value",
        ] {
            assert!(bad.parse::<Objective>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn rewards_weigh_clicks_and_values() {
        let mixed = Objective {
            clicks: 1.0,
            value: 0.5,
        };
        assert_eq!(mixed.reward(true, Some(4.0)), 3.0);
        assert_eq!(mixed.reward(false, None), 0.0);
        assert_eq!(Objective::CLICKS.reward(true, Some(9.0)), 1.0);
        assert_eq!(Objective::VALUE.reward_of_click(7.0), 7.0);
        assert_eq!(Objective::default_for(false), Objective::CLICKS);
    }
}
