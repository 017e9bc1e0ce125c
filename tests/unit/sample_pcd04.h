/* sample_pcd04.h - ORU^R40 alarm messages as monitors send them (IHE PCD-04 ACM, v2.6),
 * shared by the unit tests. Segments end with CR as on the wire.
 *
 *   r40_desat_start   an SpO2 desaturation (physiological, high priority) starting, in the
 *                     layout of the IHE PCD TF-2 examples: an ST type row whose OBX-3 is the
 *                     event, the source row with value, unit and limits, then one row per
 *                     attribute in the 68480..68485 code set, OBX-18 the monitor's EUI-64.
 *   r40_leadoff       an ECG lead-off (technical, low priority) as a gateway of another
 *                     vendor sends it: OBX-3 the generic MDC_EVT_ALARM with the event in the
 *                     CWE OBX-5 (display text in 5.9), priority and kind in OBX-8, the alert
 *                     source as a CWE row, attributes in the other code set (68165..68168)
 *                     without reference id names, a vendor attribute we do not know, and a
 *                     device hierarchy row.
 *   r40_desat_end     the end of r40_desat_start's alarm (same OBR-3), acknowledged.
 *   r40_heartbeat     a watchdog message: priority PN, phase continue.
 */
#ifndef CMS_TEST_SAMPLE_PCD04_H
#define CMS_TEST_SAMPLE_PCD04_H

static const char r40_desat_start[] =
    "MSH|^~\\&|MON-0001^0012A1FFFE000001^EUI-64|Example Monitors|CMS|GENERAL "
    "HOSPITAL|20261115083012.500+0100||ORU^R40^ORU_R40|MON-0001-A-000101|P|2.6|||AL|NE||UNICODE "
    "UTF-8|||IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.4.4^ISO\r"
    "PID|||MRN-448812^^^GENERAL HOSPITAL^MR||ROE^RICHARD^^^^^L||19580211|M\r"
    "PV1||I|CCU^^BED-07\r"
    "OBR|1|MON-0001-A-000101^MON-0001|ALM-20261115-0042^MON-0001^0012A1FFFE000001^EUI-64|196616^"
    "MDC_EVT_ALARM^MDC|||20261115083012+0100\r"
    "OBX|1|ST|196674^MDC_EVT_DESAT^MDC|1.22.1.150456.1|SpO2 Desat||||||F|||20261115083011.750+0100|"
    "|||0012A1FFFE000001^^0012A1FFFE000001^EUI-64\r"
    "OBX|2|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.22.1.150456.2|84|262688^MDC_DIM_PERCENT^MDC|90-100|"
    "L|||F|||20261115083011.750+0100||||0012A1FFFE000001^^0012A1FFFE000001^EUI-64\r"
    "OBX|3|ST|68481^MDC_ATTR_EVENT_PHASE^MDC|1.22.1.150456.3|start||||||F\r"
    "OBX|4|ST|68482^MDC_ATTR_ALARM_STATE^MDC|1.22.1.150456.4|active||||||F\r"
    "OBX|5|ST|68483^MDC_ATTR_ALARM_INACTIVATION_STATE^MDC|1.22.1.150456.5|enabled||||||F\r"
    "OBX|6|ST|68484^MDC_ATTR_ALARM_PRIORITY^MDC|1.22.1.150456.6|PH||||||F\r"
    "OBX|7|ST|68485^MDC_ATTR_ALERT_TYPE^MDC|1.22.1.150456.7|SP||||||F\r";

static const char r40_leadoff[] =
    "MSH|^~\\&|MON-0003^00A037FFFE000003^EUI-64|Example Monitors|||20261115090501+0800||ORU^R40^"
    "ORU_R40|MON-0003-77120|P|2.6|||AL|NE\r"
    "PID|||MRN-77031^^^GENERAL HOSPITAL^MR||DOE^JANE\r"
    "PV1||I|ICU^^BED-03\r"
    "OBR|1||LEADOFF-31^MON-0003^00A037FFFE000003^EUI-64|196616^MDC_EVT_ALARM^MDC|||"
    "20261115090501+0800\r"
    "OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X\r"
    "OBX|2|CWE|196616^MDC_EVT_ALARM^MDC|1.7.0.196680.1|196680^MDC_EVT_LEAD_OFF^MDC^^^^^^ECG Lead "
    "Off|||A~PL~ST|||R|||20261115090501+0800\r"
    "OBX|3|CWE|68480^MDC_ATTR_ALERT_SOURCE^MDC|1.7.0.196680.2|69798^MDC_DEV_ECG_VMD^MDC||||||R\r"
    "OBX|4|ST|68165^^MDC|1.7.0.196680.3|CONTINUE||||||R\r"
    "OBX|5|ST|68166^^MDC|1.7.0.196680.4|latched||||||R\r"
    "OBX|6|ST|68167^^MDC|1.7.0.196680.5|audio-paused||||||R\r"
    "OBX|7|NM|0^MDCX_VENDOR_ALARM_REPEAT^MDC|1.7.0.196680.9|3||||||R\r";

static const char r40_desat_end[] =
    "MSH|^~\\&|MON-0001^0012A1FFFE000001^EUI-64|Example Monitors|CMS|GENERAL "
    "HOSPITAL|20261115083148.000+0100||ORU^R40^ORU_R40|MON-0001-A-000117|P|2.6|||AL|NE\r"
    "PID|||MRN-448812^^^GENERAL HOSPITAL^MR||ROE^RICHARD^^^^^L||19580211|M\r"
    "PV1||I|CCU^^BED-07\r"
    "OBR|1|MON-0001-A-000117^MON-0001|ALM-20261115-0042^MON-0001^0012A1FFFE000001^EUI-64|196616^"
    "MDC_EVT_ALARM^MDC|||20261115083148+0100\r"
    "OBX|1|ST|196674^MDC_EVT_DESAT^MDC|1.22.1.150456.1|SpO2 Desat||||||F|||20261115083148+0100\r"
    "OBX|2|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.22.1.150456.2|93|262688^MDC_DIM_PERCENT^MDC|90-100|"
    "N|||F\r"
    "OBX|3|ST|68481^MDC_ATTR_EVENT_PHASE^MDC|1.22.1.150456.3|end||||||F\r"
    "OBX|4|ST|68482^MDC_ATTR_ALARM_STATE^MDC|1.22.1.150456.4|inactive||||||F\r"
    "OBX|5|ST|68483^MDC_ATTR_ALARM_INACTIVATION_STATE^MDC|1.22.1.150456.5|alert-acknowledged||||"
    "||F\r"
    "OBX|6|ST|68484^MDC_ATTR_ALARM_PRIORITY^MDC|1.22.1.150456.6|PH||||||F\r"
    "OBX|7|ST|68485^MDC_ATTR_ALERT_TYPE^MDC|1.22.1.150456.7|SP||||||F\r";

static const char r40_heartbeat[] =
    "MSH|^~\\&|MON-0001^0012A1FFFE000001^EUI-64|Example Monitors|||20261115083100+0100||ORU^R40^"
    "ORU_R40|MON-0001-HB-000031|P|2.6|||AL|NE\r"
    "PID|||MRN-448812^^^GENERAL HOSPITAL^MR\r"
    "OBR|1||HEARTBEAT^MON-0001^0012A1FFFE000001^EUI-64|196616^MDC_EVT_ALARM^MDC|||"
    "20261115083100+0100\r"
    "OBX|1|ST|196616^MDC_EVT_ALARM^MDC|0.0.0.0.1|watchdog||||||F\r"
    "OBX|2|ST|68481^MDC_ATTR_EVENT_PHASE^MDC|0.0.0.0.3|continue||||||F\r"
    "OBX|3|ST|68484^MDC_ATTR_ALARM_PRIORITY^MDC|0.0.0.0.6|PN||||||F\r"
    "OBX|4|ST|68485^MDC_ATTR_ALERT_TYPE^MDC|0.0.0.0.7|SA||||||F\r";

#endif
