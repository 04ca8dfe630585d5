//! TCP options of a SYN or SYN-ACK, as the classifiers copy them (up to 40
//! bytes, but any length must be safe: `opt_len` comes from the kernel side).
#![no_main]

use libfuzzer_sys::fuzz_target;
use synack::model::tcp::{OptionError, parse_options};

fuzz_target!(|b: &[u8]| {
    match parse_options(b) {
        // An error names the option that broke parsing; `synack --json`
        // prints it, so it must point at bytes that are really there.
        Err(OptionError::Truncated { kind, offset }) => assert_eq!(b[offset], kind),
        Err(OptionError::BadLength { kind, offset, len }) => {
            assert_eq!((b[offset], b[offset + 1]), (kind, len));
            assert!(len < 2 || matches!(kind, 2 | 3 | 4 | 8));
        }
        // A good option list ends where the bytes end or at End of Option
        // List: nothing after an EOL may change what was read (a stack
        // ignores it too).
        Ok(o) => {
            let mut more = b.to_vec();
            more.extend_from_slice(&[0, 2, 4, 0xff]);
            assert_eq!(parse_options(&more), Ok(o));
        }
    }
});
