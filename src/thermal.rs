//! The thermal registers as the bench models them: IA32_THERM_STATUS (0x19c)
//! and IA32_PACKAGE_THERM_STATUS (0x1b1), Intel SDM vol. 4. The events
//! module's own model is `kmod/kthermal.h`; a test compares the two.

/// Status and log bits by name; each status bit's log bit is the next one up.
pub const BITS: &[(&str, u32)] = &[
    ("prochot", 0),
    ("prochot_log", 1),
    ("external_prochot", 2),
    ("external_prochot_log", 3),
    ("critical", 4),
    ("critical_log", 5),
    ("threshold1", 6),
    ("threshold1_log", 7),
    ("threshold2", 8),
    ("threshold2_log", 9),
    ("power_limit", 10),
    ("power_limit_log", 11),
];

/// PROCHOT, the status bit the 2004 handler reported.
pub const PROCHOT: u64 = 1;
/// Every status bit (the log bits are one above each).
pub const STATUS_MASK: u64 = 0x555;
/// Every log bit: set when its status bit changes, cleared only by software (KT_LOG_MASK).
pub const LOG_MASK: u64 = STATUS_MASK << 1;
/// Digital readout, degrees below TjMax, bits 22:16.
pub const READOUT_SHIFT: u32 = 16;
/// Largest readout, the 7-bit field full: 127 degrees below TjMax.
pub const READOUT_MAX: u64 = 0x7f;
/// The readout field in place (KT_READOUT_MASK, bits 22:16).
pub const READOUT_MASK: u64 = READOUT_MAX << READOUT_SHIFT;
/// Reading valid (core register only; reserved in the package register).
pub const VALID: u64 = 1 << 31;
/// Bits the hardware may set in IA32_THERM_STATUS; everything else is reserved (KT_CORE_MASK).
pub const CORE_MASK: u64 = STATUS_MASK | LOG_MASK | READOUT_MASK | VALID;
/// The same for IA32_PACKAGE_THERM_STATUS, which has no valid bit (KT_PKG_MASK).
pub const PACKAGE_MASK: u64 = STATUS_MASK | LOG_MASK | READOUT_MASK;
/// The reading of a register nobody has changed: 50 degrees below TjMax.
pub const RESET_READOUT: u64 = 50;
/// IA32_TEMPERATURE_TARGET's TjMax: the module's default and range.
pub const DEFAULT_TJMAX: u32 = 100;
/// TjMax values (°C) the module's `tjmax` parameter accepts: bits 23:16 of
/// IA32_TEMPERATURE_TARGET, 0 excluded.
pub const TJMAX_RANGE: std::ops::RangeInclusive<u32> = 1..=255;

/// The bit a name stands for.
pub fn bit_named(name: &str) -> Option<u32> {
    BITS.iter().find(|(known, _)| *known == name).map(|&(_, bit)| bit)
}

/// Every bit name a scenario may use, in bit order, for error messages.
pub fn bit_names() -> Vec<&'static str> {
    BITS.iter().map(|(name, _)| *name).collect()
}

/// The readout (degrees below TjMax) of `celsius`, if the 7-bit field can
/// hold it.
pub fn readout_of(tjmax: u32, celsius: i64) -> Option<u64> {
    let below = i64::from(tjmax).checked_sub(celsius)?;
    u64::try_from(below).ok().filter(|b| *b <= READOUT_MAX)
}

/// The coolest and hottest temperature the readout can express.
pub fn temperature_range(tjmax: u32) -> (i64, i64) {
    (i64::from(tjmax) - READOUT_MAX as i64, i64::from(tjmax))
}

/// A core register image: the named status and log bits, `celsius` as
/// the readout, valid.
pub fn core_image(bits: &[&str], tjmax: u32, celsius: i64) -> Option<u64> {
    let mut image = VALID | readout_of(tjmax, celsius)? << READOUT_SHIFT;
    for name in bits {
        image |= 1 << bit_named(name)?;
    }
    Some(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readout_covers_tjmax_down_to_127_below_and_nothing_else() {
        assert_eq!(readout_of(100, 100), Some(0));
        assert_eq!(readout_of(100, -27), Some(127));
        assert_eq!(readout_of(100, -28), None);
        assert_eq!(readout_of(100, 101), None);
        assert_eq!(readout_of(100, i64::MIN), None);
        assert_eq!(readout_of(100, i64::MAX), None);
        assert_eq!(temperature_range(90), (-37, 90));
    }

    #[test]
    fn images_are_built_from_names() {
        // PROCHOT at 95 °C under TjMax 100: 5 below, valid.
        assert_eq!(core_image(&["prochot"], 100, 95), Some(0x8005_0001));
        assert_eq!(core_image(&["hot"], 100, 95), None);
        assert_eq!(CORE_MASK, 0x807f_0fff);
        assert_eq!(PACKAGE_MASK, 0x007f_0fff);
    }

    #[test]
    fn every_status_bit_has_its_log_bit_next() {
        for (name, bit) in BITS {
            let status = name.strip_suffix("_log").is_none();
            assert_eq!(status, bit % 2 == 0, "{name}");
            assert_eq!(status, STATUS_MASK & (1 << bit) != 0, "{name}");
        }
    }

    /// The module's own model (kmod/kthermal.h) says the same.
    #[test]
    fn the_events_modules_model_agrees() {
        let defines = crate::kmod_source::defines("kthermal.h");
        let value = |name: &str| defines.get(name).unwrap_or_else(|| panic!("no {name} in kmod/kthermal.h")).clone();
        assert_eq!(value("KT_READOUT_SHIFT"), READOUT_SHIFT.to_string());
        assert_eq!(value("KT_READOUT_MASK"), "GENMASK_ULL(22, 16)");
        assert_eq!(READOUT_MASK, ((1u64 << 23) - 1) & !((1u64 << 16) - 1));
        assert_eq!(value("KT_VALID"), "BIT_ULL(31)");
        assert_eq!(value("KT_RESET_READOUT"), format!("{RESET_READOUT}ULL"));
        for (define, bit) in [
            ("KT_STATUS_PROCHOT", 0),
            ("KT_STATUS_EXT_PROCHOT", 2),
            ("KT_STATUS_CRITICAL", 4),
            ("KT_STATUS_THRESHOLD1", 6),
            ("KT_STATUS_THRESHOLD2", 8),
            ("KT_STATUS_POWER_LIMIT", 10),
        ] {
            assert_eq!(value(define), format!("BIT_ULL({bit})"), "{define}");
            assert_eq!(bit_named(BITS[bit as usize].0), Some(bit));
        }
        // The composed masks, as the header composes them.
        assert_eq!(
            value("KT_STATUS_MASK"),
            "(KT_STATUS_PROCHOT | KT_STATUS_EXT_PROCHOT | KT_STATUS_CRITICAL | KT_STATUS_THRESHOLD1 | \
             KT_STATUS_THRESHOLD2 | KT_STATUS_POWER_LIMIT)"
        );
        assert_eq!(STATUS_MASK, (0..6).map(|k| 1u64 << (2 * k)).fold(0, |m, b| m | b));
        assert_eq!(value("KT_LOG_MASK"), "(KT_STATUS_MASK << 1)");
        assert_eq!(value("KT_CORE_MASK"), "(KT_STATUS_MASK | KT_LOG_MASK | KT_READOUT_MASK | KT_VALID)");
        assert_eq!(value("KT_PKG_MASK"), "(KT_STATUS_MASK | KT_LOG_MASK | KT_READOUT_MASK)");
    }
}
