//! What the product knows of kata itself, apart from the policy host and the artifact store that
//! both use it: the settings a policy may change in a class's kata configuration, and their
//! rules ([`validate_kata_settings`]).

mod settings;

pub(crate) use settings::MAX_SETTINGS;
pub use settings::{KataSection, KataSetting, VfioPort, validate_kata_settings};
