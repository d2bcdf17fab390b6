//! A hostile policy for the host's tests: a valid component of another world
//! (`wit/world.wit`), which the host must refuse at load.

wit_bindgen::generate!({ path: "wit", world: "other" });

struct Other;

impl Guest for Other {
    fn validate_settings(settings: u32) -> u32 {
        settings
    }
}

export!(Other);
