"""PCD-01 waveform content end to end: NA blocks (ECG 500 Hz in counts of
2.5 uV, pleth 125 Hz given by its sample period) and an MA block stored one
row per block and channel, scaled by their resolution, unknown facets kept;
bad content answered AE naming the OBX, a block over waveform_max_samples AR;
waveform retention by partition (docs/clinical-data.md)."""

import math

import pytest

import helpers as h

DEV = "MON-0002"


def ecg(i):
    """Lead II counts at 500 Hz: a PQRST complex at 72 bpm (tests/unit/sample_wave.h)."""
    t = math.fmod(i / 500.0, 60.0 / 72.0)
    v = (60 * math.exp(-((t - 0.16) / 0.025) ** 2) - 40 * math.exp(-((t - 0.245) / 0.008) ** 2)
         + 480 * math.exp(-((t - 0.26) / 0.010) ** 2) - 90 * math.exp(-((t - 0.275) / 0.009) ** 2)
         + 120 * math.exp(-((t - 0.50) / 0.050) ** 2))
    return int(round(v))


def pleth(i):
    t = math.fmod(i / 125.0, 60.0 / 72.0) / (60.0 / 72.0)
    return int(round(1200 + 1800 * math.exp(-((t - 0.25) / 0.12) ** 2)
                     + 500 * math.exp(-((t - 0.55) / 0.1) ** 2)))


def wave_msg(device, cid, patient, ecg_n=500, pleth_n=125, ecg_rate=True, ecg_samples=None,
             extra=()):
    """One second of ECG II and pleth as a monitor sends it (Waveform Content
    Module in an ORU^R01), then an ordinary SpO2 numeric."""
    ecg_s = ecg_samples if ecg_samples is not None else "^".join(
        str(ecg(i)) for i in range(ecg_n))
    segs = [
        "MSH|^~\\&|%s^%s^L|Example Monitors|CMS|GENERAL HOSPITAL|20261115083001.000+0100||"
        "ORU^R01^ORU_R01|%s|P|2.6|||NE|AL||UNICODE UTF-8|||"
        "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO" % (device, device, cid),
        "PID|||%s^^^GENERAL HOSPITAL^MR||ROE^RICHARD^^^^^L||19580211|M" % patient,
        "PV1||I|CCU^^BED-07",
        "OBR|1|%s^%s|%s^%s|69121^MDC_OBS_WAVE_CTS^MDC|||20261115083000.000+0100|"
        "20261115083001.000+0100" % (cid, device, cid, device),
        "OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X",
        "OBX|2||69798^MDC_DEV_ECG_VMD^MDC|1.5.0.0|||||||X",
        "OBX|3|NA|131330^MDC_ECG_ELEC_POTL_II^MDC|1.5.1.131330|%s|266418^MDC_DIM_MICRO_VOLT^MDC"
        "|||||F|||20261115083000.000+0100" % ecg_s,
    ]
    if ecg_rate:
        segs.append("OBX|4|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.5.1.131330.1|500|"
                    "264608^MDC_DIM_PER_SEC^MDC|||||F")
    segs += [
        "OBX|5|NM|2327^MDC_ATTR_NU_MSMT_RES^MDC|1.5.1.131330.2|2.5|266418^MDC_DIM_MICRO_VOLT^MDC"
        "|||||F",
        "OBX|6|NR|0^MDC_ATTR_DATA_RANGE^MDC|1.5.1.131330.3|-4096^4095|||||F",
        "OBX|7|NA|150452^MDC_PULS_OXIM_PLETH^MDC|1.22.1.150452|%s|262656^MDC_DIM_DIMLESS^MDC"
        "|||||F|||20261115083000.000+0100" % "^".join(str(pleth(i)) for i in range(pleth_n)),
        "OBX|8|NM|2445^MDC_ATTR_TIME_PD_SAMP^MDC|1.22.1.150452.1|8|264338^MDC_DIM_MILLI_SEC^MDC"
        "|||||F",
        "OBX|9|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.22.1.1|96|262688^MDC_DIM_PERCENT^MDC|||||R"
        "|||20261115083000+0100",
    ]
    return "\r".join(segs + list(extra)) + "\r"


def blocks(db, patient):
    return db.query("SELECT mdc_label, channel, sample_rate, scale, nsamples, unit_label, "
                    "start_at, end_at, raw_samples, samples, facets::text "
                    "FROM cms.waveforms WHERE patient_id = %s ORDER BY mdc_code, channel",
                    (patient,))


def send(cmsd, connect, msg):
    with connect(cmsd.port, DEV) as c:
        return c.request(msg)


def test_ecg_and_pleth_stored_scaled_one_row_per_block(cmsd, db, connect):
    cid, pt = h.unique("W"), h.unique("PT-W")
    ack = send(cmsd, connect, wave_msg(DEV, cid, pt))
    assert (ack.code, ack.control_id) == ("AA", cid), ack
    b = blocks(db, pt)
    assert [(r[0], r[2], r[4]) for r in b] == [
        ("MDC_ECG_ELEC_POTL_II", 500.0, 500), ("MDC_PULS_OXIM_PLETH", 125.0, 125)], b
    label, chan, rate, scale, n, unit, start, end, raw, samples, facets = b[0]
    assert (chan, scale, unit) == (0, 2.5, "MDC_DIM_MICRO_VOLT")
    assert raw == [ecg(i) for i in range(500)]
    assert samples == [2.5 * ecg(i) for i in range(500)]  # physical: counts x resolution
    assert (end - start).total_seconds() == 1.0 and start.utcoffset() is not None
    assert '"MDC_ATTR_DATA_RANGE"' in facets and '"-4096^4095"' in facets, facets
    assert b[1][8] == [pleth(i) for i in range(125)] and b[1][3] == 1.0
    # kept as 16-bit integers, not one row per sample
    kinds = db.query("SELECT samples_i2 IS NOT NULL, samples_i4 IS NOT NULL, samples_f8 IS NOT "
                     "NULL FROM cms.waveform_blocks w JOIN cms.messages m ON m.id = w.message_id"
                     " WHERE m.control_id = %s", (cid,))
    assert kinds == [(True, False, False)] * 2, kinds
    # the numeric is a vital; the waveform facet rows are not
    rows = db.vitals(patient_id=pt)
    assert [r["mdc_code"] for r in rows] == ["150456"], rows


def test_ma_channels_and_decimal_samples(cmsd, db, connect):
    cid, pt = h.unique("W"), h.unique("PT-W")
    extra = ["OBX|20|MA|131328^MDC_ECG_ELEC_POTL^MDC|1.5.1.1|1^10~2^20~3^30|"
             "266418^MDC_DIM_MICRO_VOLT^MDC|||||F",
             "OBX|21|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.5.1.1.1|250|264608^MDC_DIM_PER_SEC^MDC",
             "OBX|22|NA|131329^MDC_ECG_ELEC_POTL_I^MDC|1.5.1.131329|0.125^-1.5^0.02|"
             "266418^MDC_DIM_MILLI_VOLT^MDC|||||F",
             "OBX|23|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.5.1.131329.1|500|264608^MDC_DIM_PER_SEC^MDC"]
    ack = send(cmsd, connect, wave_msg(DEV, cid, pt, ecg_n=5, pleth_n=5, extra=extra))
    assert ack.code == "AA", ack
    got = {(r[0], r[1]): r for r in blocks(db, pt)}
    assert got[("MDC_ECG_ELEC_POTL", 1)][9] == [1.0, 2.0, 3.0]
    assert got[("MDC_ECG_ELEC_POTL", 2)][9] == [10.0, 20.0, 30.0]
    dec = got[("MDC_ECG_ELEC_POTL_I", 0)]
    assert dec[8] == [125, -1500, 20] and dec[3] == pytest.approx(0.001)  # exact: milli-units
    assert dec[9] == pytest.approx([0.125, -1.5, 0.02])


def test_missing_rate_and_bad_samples_are_ae_with_the_obx(cmsd, db, connect):
    pt = h.unique("PT-BAD")
    cid = h.unique("W")
    ack = send(cmsd, connect, wave_msg(DEV, cid, pt, ecg_rate=False))
    assert (ack.code, ack.control_id, ack.err_code) == ("AE", cid, "101"), ack
    assert "OBX #3 (OBX-1 3)" in ack.reason() and "sample rate" in ack.reason(), ack
    cid = h.unique("W")
    ack = send(cmsd, connect, wave_msg(DEV, cid, pt, ecg_samples="12^-7^1O^4"))
    assert (ack.code, ack.err_code) == ("AE", "102"), ack
    assert "OBX #3 (OBX-1 3)" in ack.reason() and "sample 3" in ack.reason(), ack
    assert "1O" not in ack.reason()  # values are not quoted
    assert blocks(db, pt) == [] and db.vitals(patient_id=pt) == []


def test_block_over_the_limit_is_ar(cmsd, db, connect):
    limit = int(cmsd.cfg.get("waveform_max_samples", 5000))
    pt = h.unique("PT-BIG")
    cid = h.unique("W")
    ack = send(cmsd, connect, wave_msg(DEV, cid, pt, ecg_samples="^".join(["7"] * (limit + 1))))
    assert (ack.code, ack.control_id) == ("AR", cid), ack
    assert "%d samples" % (limit + 1) in ack.reason() and "OBX #3" in ack.reason(), ack
    cid = h.unique("W")
    ack = send(cmsd, connect, wave_msg(DEV, cid, pt, ecg_samples="^".join(["7"] * limit)))
    assert ack.code == "AA", ack
    assert [r[4] for r in blocks(db, pt)] == [limit, 125]


def test_resent_waveform_stored_once(cmsd, db, connect):
    cid, pt = h.unique("W"), h.unique("PT-W")
    msg = wave_msg(DEV, cid, pt)
    with connect(cmsd.port, DEV) as c:
        assert c.request(msg).code == "AA"
        assert c.request(msg).code == "AA"
    assert len(blocks(db, pt)) == 2


def test_waveforms_dropped_by_partition_after_retention(db):
    """cms.drop_waveforms_older_than(hours) (what cmsd runs hourly with
    waveform_retention_hours) drops whole hourly partitions and old rows of the
    DEFAULT partition; newer blocks stay."""
    dev = db.scalar("SELECT id FROM cms.devices WHERE serial = %s", (DEV,))
    old = db.scalar("SELECT date_trunc('hour', now() AT TIME ZONE 'UTC') - interval '80 hours'")
    part = "waveform_blocks_p" + old.strftime("%Y%m%d%H")
    db.execute("SELECT cms.ensure_range_partition('waveform_blocks', %s, 'start_at', "
               "%s::timestamp AT TIME ZONE 'UTC', "
               "(%s::timestamp + interval '1 hour') AT TIME ZONE 'UTC', '')", (part, old, old))
    ins = ("INSERT INTO cms.waveform_blocks (message_id, device_id, start_at, received_at, code, "
           "sample_rate, scale, nsamples, samples_i2) VALUES (0, %s, {}, now(), 'RET', 500, 1, 2, "
           "'{{1,2}}')")
    db.execute(ins.format("%s::timestamptz"), (dev, old.isoformat() + "+00:00"))  # its partition
    db.execute(ins.format("now() - interval '100 hours'"), (dev,))  # no partition: DEFAULT
    db.execute(ins.format("now()"), (dev,))  # this hour's partition
    assert db.scalar("SELECT count(*) FROM cms.waveform_blocks WHERE code = 'RET'") == 3
    dropped = db.scalar("SELECT cms.drop_waveforms_older_than(72)")
    assert dropped >= 1
    assert db.scalar("SELECT to_regclass(%s)", ("cms." + part,)) is None
    assert db.scalar("SELECT count(*) FROM cms.waveform_blocks WHERE code = 'RET'") == 1
    # the numerics are not touched by the waveform retention
    assert db.scalar("SELECT count(*) FROM cms.observations") > 0
