"""search: a word is a run of letters, digits, marks and private use, on every engine

A combining mark (Unicode categories Mn, Mc, Me) belongs to the word it is written in:
Hindi "हिन्दी", Arabic with harakat, Hebrew with points, Thai vowel signs, "café" typed
with a combining accent. The query side split such words at every mark, SQLite at some
marks and Postgres by its locale (under LC_CTYPE C never, under C.UTF-8 at a virama or a
combining accent), so a search for "हिन्दी" found nothing on Postgres and on SQLite also
found "दिन है". Now ``mosaic.search``, SQLite and Postgres of any locale agree on every
assigned code point: a word is a maximal run of letters, numbers, marks and private-use
characters (L*, N*, M*, Co; private use as in unicode61's default, icon fonts' glyphs
being part of a name), but for the marks that dress an emoji (the variation selectors
U+FE00-FE0F and U+E0100-E01EF, and U+20E3 of a keycap), which would glue "⚠️Warning"
into one word; everything else separates words. Postgres needs a UTF8 database: under
SQL_ASCII the code point ranges would meet bytes, so the migration refuses one.

SQLite: the FTS5 table is rebuilt with ``categories 'L* N* M* Co'`` (unicode61's default
'L* N* Co' splits at marks) and ``separators`` listing every assigned code point from
U+0080 on that is not in a word (8,998 code points: punctuation, symbols, spaces, controls,
format characters and the emoji's marks). unicode61's Unicode 6.1-era tables put what they
do not know (newer emoji and symbols) in a category it always keeps inside words, so the
list holds them one by one; SQLite 3.40.1 takes 2,689 of them as exceptions. No
letter, number or mark needs ``tokenchars`` (tests/unit/test_search_engines.py probes
every code point). unicode61 inserts each exception into a sorted array, so the list runs
from the highest code point down (each insertion then moves the array instead of
scanning it); each connection pays this, well under a millisecond, the first time it
uses the table.

Postgres: its parser decides what a letter is by the database's LC_CTYPE, so
``search_tsv`` no longer goes through it. Every run of characters outside the word ranges
(a bracket expression of explicit code points, which means the same in every locale)
becomes one space; the text is lowered, ASCII letters by translate() (in every collation,
a Turkish one included) and the rest by lower() (the database's collation decides that
case mapping, and words end at spaces, so a final sigma is the same in a row as in a
query); the function resources_search_words cuts each word to its first 255 characters
(a lexeme holds at most 2047 bytes, which array_to_tsvector does not check; a regular
expression would backtrack on every longer word); the words become the lexemes, without
positions.
resource-service builds its tsquery from the query's words the same way
(ResourceStore.search). The downgrade runs resources_0005's upgrade again, which
restores its column from its own data, and drops the function.

Revision ID: resources_0006
Revises: resources_0005
Create Date: 2026-12-06
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "resources_0006"
down_revision: str | None = "resources_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every code point in categories L*, N*, M* and Co: mosaic.search's words are runs of these.
# Generated once from Python 3.11's Unicode 14 tables and kept here as data, so that the
# migration stays what it was when databases ran it; tests/unit/test_search_words.py
# checks it against those tables both ways.
_WORD_DATA = (
    "30-39,41-5A,61-7A,AA,B2-B3,B5,B9-BA,BC-BE,C0-D6,D8-F6,F8-2C1,2C6-2D1,2E0-2E4,2EC,2EE,"
    "300-374,376-377,37A-37D,37F,386,388-38A,38C,38E-3A1,3A3-3F5,3F7-481,483-52F,531-556,"
    "559,560-588,591-5BD,5BF,5C1-5C2,5C4-5C5,5C7,5D0-5EA,5EF-5F2,610-61A,620-669,66E-6D3,"
    "6D5-6DC,6DF-6E8,6EA-6FC,6FF,710-74A,74D-7B1,7C0-7F5,7FA,7FD,800-82D,840-85B,860-86A,"
    "870-887,889-88E,898-8E1,8E3-963,966-96F,971-983,985-98C,98F-990,993-9A8,9AA-9B0,9B2,"
    "9B6-9B9,9BC-9C4,9C7-9C8,9CB-9CE,9D7,9DC-9DD,9DF-9E3,9E6-9F1,9F4-9F9,9FC,9FE,A01-A03,"
    "A05-A0A,A0F-A10,A13-A28,A2A-A30,A32-A33,A35-A36,A38-A39,A3C,A3E-A42,A47-A48,A4B-A4D,"
    "A51,A59-A5C,A5E,A66-A75,A81-A83,A85-A8D,A8F-A91,A93-AA8,AAA-AB0,AB2-AB3,AB5-AB9,"
    "ABC-AC5,AC7-AC9,ACB-ACD,AD0,AE0-AE3,AE6-AEF,AF9-AFF,B01-B03,B05-B0C,B0F-B10,B13-B28,"
    "B2A-B30,B32-B33,B35-B39,B3C-B44,B47-B48,B4B-B4D,B55-B57,B5C-B5D,B5F-B63,B66-B6F,"
    "B71-B77,B82-B83,B85-B8A,B8E-B90,B92-B95,B99-B9A,B9C,B9E-B9F,BA3-BA4,BA8-BAA,BAE-BB9,"
    "BBE-BC2,BC6-BC8,BCA-BCD,BD0,BD7,BE6-BF2,C00-C0C,C0E-C10,C12-C28,C2A-C39,C3C-C44,"
    "C46-C48,C4A-C4D,C55-C56,C58-C5A,C5D,C60-C63,C66-C6F,C78-C7E,C80-C83,C85-C8C,C8E-C90,"
    "C92-CA8,CAA-CB3,CB5-CB9,CBC-CC4,CC6-CC8,CCA-CCD,CD5-CD6,CDD-CDE,CE0-CE3,CE6-CEF,"
    "CF1-CF2,D00-D0C,D0E-D10,D12-D44,D46-D48,D4A-D4E,D54-D63,D66-D78,D7A-D7F,D81-D83,"
    "D85-D96,D9A-DB1,DB3-DBB,DBD,DC0-DC6,DCA,DCF-DD4,DD6,DD8-DDF,DE6-DEF,DF2-DF3,E01-E3A,"
    "E40-E4E,E50-E59,E81-E82,E84,E86-E8A,E8C-EA3,EA5,EA7-EBD,EC0-EC4,EC6,EC8-ECD,ED0-ED9,"
    "EDC-EDF,F00,F18-F19,F20-F33,F35,F37,F39,F3E-F47,F49-F6C,F71-F84,F86-F97,F99-FBC,FC6,"
    "1000-1049,1050-109D,10A0-10C5,10C7,10CD,10D0-10FA,10FC-1248,124A-124D,1250-1256,1258,"
    "125A-125D,1260-1288,128A-128D,1290-12B0,12B2-12B5,12B8-12BE,12C0,12C2-12C5,12C8-12D6,"
    "12D8-1310,1312-1315,1318-135A,135D-135F,1369-137C,1380-138F,13A0-13F5,13F8-13FD,"
    "1401-166C,166F-167F,1681-169A,16A0-16EA,16EE-16F8,1700-1715,171F-1734,1740-1753,"
    "1760-176C,176E-1770,1772-1773,1780-17D3,17D7,17DC-17DD,17E0-17E9,17F0-17F9,180B-180D,"
    "180F-1819,1820-1878,1880-18AA,18B0-18F5,1900-191E,1920-192B,1930-193B,1946-196D,"
    "1970-1974,1980-19AB,19B0-19C9,19D0-19DA,1A00-1A1B,1A20-1A5E,1A60-1A7C,1A7F-1A89,"
    "1A90-1A99,1AA7,1AB0-1ACE,1B00-1B4C,1B50-1B59,1B6B-1B73,1B80-1BF3,1C00-1C37,1C40-1C49,"
    "1C4D-1C7D,1C80-1C88,1C90-1CBA,1CBD-1CBF,1CD0-1CD2,1CD4-1CFA,1D00-1F15,1F18-1F1D,"
    "1F20-1F45,1F48-1F4D,1F50-1F57,1F59,1F5B,1F5D,1F5F-1F7D,1F80-1FB4,1FB6-1FBC,1FBE,"
    "1FC2-1FC4,1FC6-1FCC,1FD0-1FD3,1FD6-1FDB,1FE0-1FEC,1FF2-1FF4,1FF6-1FFC,2070-2071,"
    "2074-2079,207F-2089,2090-209C,20D0-20E2,20E4-20F0,2102,2107,210A-2113,2115,2119-211D,"
    "2124,2126,2128,212A-212D,212F-2139,213C-213F,2145-2149,214E,2150-2189,2460-249B,"
    "24EA-24FF,2776-2793,2C00-2CE4,2CEB-2CF3,2CFD,2D00-2D25,2D27,2D2D,2D30-2D67,2D6F,"
    "2D7F-2D96,2DA0-2DA6,2DA8-2DAE,2DB0-2DB6,2DB8-2DBE,2DC0-2DC6,2DC8-2DCE,2DD0-2DD6,"
    "2DD8-2DDE,2DE0-2DFF,2E2F,3005-3007,3021-302F,3031-3035,3038-303C,3041-3096,3099-309A,"
    "309D-309F,30A1-30FA,30FC-30FF,3105-312F,3131-318E,3192-3195,31A0-31BF,31F0-31FF,"
    "3220-3229,3248-324F,3251-325F,3280-3289,32B1-32BF,3400-4DBF,4E00-A48C,A4D0-A4FD,"
    "A500-A60C,A610-A62B,A640-A672,A674-A67D,A67F-A6F1,A717-A71F,A722-A788,A78B-A7CA,"
    "A7D0-A7D1,A7D3,A7D5-A7D9,A7F2-A827,A82C,A830-A835,A840-A873,A880-A8C5,A8D0-A8D9,"
    "A8E0-A8F7,A8FB,A8FD-A92D,A930-A953,A960-A97C,A980-A9C0,A9CF-A9D9,A9E0-A9FE,AA00-AA36,"
    "AA40-AA4D,AA50-AA59,AA60-AA76,AA7A-AAC2,AADB-AADD,AAE0-AAEF,AAF2-AAF6,AB01-AB06,"
    "AB09-AB0E,AB11-AB16,AB20-AB26,AB28-AB2E,AB30-AB5A,AB5C-AB69,AB70-ABEA,ABEC-ABED,"
    "ABF0-ABF9,AC00-D7A3,D7B0-D7C6,D7CB-D7FB,E000-FA6D,FA70-FAD9,FB00-FB06,FB13-FB17,"
    "FB1D-FB28,FB2A-FB36,FB38-FB3C,FB3E,FB40-FB41,FB43-FB44,FB46-FBB1,FBD3-FD3D,FD50-FD8F,"
    "FD92-FDC7,FDF0-FDFB,FE20-FE2F,FE70-FE74,FE76-FEFC,FF10-FF19,FF21-FF3A,FF41-FF5A,"
    "FF66-FFBE,FFC2-FFC7,FFCA-FFCF,FFD2-FFD7,FFDA-FFDC,10000-1000B,1000D-10026,10028-1003A,"
    "1003C-1003D,1003F-1004D,10050-1005D,10080-100FA,10107-10133,10140-10178,1018A-1018B,"
    "101FD,10280-1029C,102A0-102D0,102E0-102FB,10300-10323,1032D-1034A,10350-1037A,"
    "10380-1039D,103A0-103C3,103C8-103CF,103D1-103D5,10400-1049D,104A0-104A9,104B0-104D3,"
    "104D8-104FB,10500-10527,10530-10563,10570-1057A,1057C-1058A,1058C-10592,10594-10595,"
    "10597-105A1,105A3-105B1,105B3-105B9,105BB-105BC,10600-10736,10740-10755,10760-10767,"
    "10780-10785,10787-107B0,107B2-107BA,10800-10805,10808,1080A-10835,10837-10838,1083C,"
    "1083F-10855,10858-10876,10879-1089E,108A7-108AF,108E0-108F2,108F4-108F5,108FB-1091B,"
    "10920-10939,10980-109B7,109BC-109CF,109D2-10A03,10A05-10A06,10A0C-10A13,10A15-10A17,"
    "10A19-10A35,10A38-10A3A,10A3F-10A48,10A60-10A7E,10A80-10A9F,10AC0-10AC7,10AC9-10AE6,"
    "10AEB-10AEF,10B00-10B35,10B40-10B55,10B58-10B72,10B78-10B91,10BA9-10BAF,10C00-10C48,"
    "10C80-10CB2,10CC0-10CF2,10CFA-10D27,10D30-10D39,10E60-10E7E,10E80-10EA9,10EAB-10EAC,"
    "10EB0-10EB1,10F00-10F27,10F30-10F54,10F70-10F85,10FB0-10FCB,10FE0-10FF6,11000-11046,"
    "11052-11075,1107F-110BA,110C2,110D0-110E8,110F0-110F9,11100-11134,11136-1113F,"
    "11144-11147,11150-11173,11176,11180-111C4,111C9-111CC,111CE-111DA,111DC,111E1-111F4,"
    "11200-11211,11213-11237,1123E,11280-11286,11288,1128A-1128D,1128F-1129D,1129F-112A8,"
    "112B0-112EA,112F0-112F9,11300-11303,11305-1130C,1130F-11310,11313-11328,1132A-11330,"
    "11332-11333,11335-11339,1133B-11344,11347-11348,1134B-1134D,11350,11357,1135D-11363,"
    "11366-1136C,11370-11374,11400-1144A,11450-11459,1145E-11461,11480-114C5,114C7,"
    "114D0-114D9,11580-115B5,115B8-115C0,115D8-115DD,11600-11640,11644,11650-11659,"
    "11680-116B8,116C0-116C9,11700-1171A,1171D-1172B,11730-1173B,11740-11746,11800-1183A,"
    "118A0-118F2,118FF-11906,11909,1190C-11913,11915-11916,11918-11935,11937-11938,"
    "1193B-11943,11950-11959,119A0-119A7,119AA-119D7,119DA-119E1,119E3-119E4,11A00-11A3E,"
    "11A47,11A50-11A99,11A9D,11AB0-11AF8,11C00-11C08,11C0A-11C36,11C38-11C40,11C50-11C6C,"
    "11C72-11C8F,11C92-11CA7,11CA9-11CB6,11D00-11D06,11D08-11D09,11D0B-11D36,11D3A,"
    "11D3C-11D3D,11D3F-11D47,11D50-11D59,11D60-11D65,11D67-11D68,11D6A-11D8E,11D90-11D91,"
    "11D93-11D98,11DA0-11DA9,11EE0-11EF6,11FB0,11FC0-11FD4,12000-12399,12400-1246E,"
    "12480-12543,12F90-12FF0,13000-1342E,14400-14646,16800-16A38,16A40-16A5E,16A60-16A69,"
    "16A70-16ABE,16AC0-16AC9,16AD0-16AED,16AF0-16AF4,16B00-16B36,16B40-16B43,16B50-16B59,"
    "16B5B-16B61,16B63-16B77,16B7D-16B8F,16E40-16E96,16F00-16F4A,16F4F-16F87,16F8F-16F9F,"
    "16FE0-16FE1,16FE3-16FE4,16FF0-16FF1,17000-187F7,18800-18CD5,18D00-18D08,1AFF0-1AFF3,"
    "1AFF5-1AFFB,1AFFD-1AFFE,1B000-1B122,1B150-1B152,1B164-1B167,1B170-1B2FB,1BC00-1BC6A,"
    "1BC70-1BC7C,1BC80-1BC88,1BC90-1BC99,1BC9D-1BC9E,1CF00-1CF2D,1CF30-1CF46,1D165-1D169,"
    "1D16D-1D172,1D17B-1D182,1D185-1D18B,1D1AA-1D1AD,1D242-1D244,1D2E0-1D2F3,1D360-1D378,"
    "1D400-1D454,1D456-1D49C,1D49E-1D49F,1D4A2,1D4A5-1D4A6,1D4A9-1D4AC,1D4AE-1D4B9,1D4BB,"
    "1D4BD-1D4C3,1D4C5-1D505,1D507-1D50A,1D50D-1D514,1D516-1D51C,1D51E-1D539,1D53B-1D53E,"
    "1D540-1D544,1D546,1D54A-1D550,1D552-1D6A5,1D6A8-1D6C0,1D6C2-1D6DA,1D6DC-1D6FA,"
    "1D6FC-1D714,1D716-1D734,1D736-1D74E,1D750-1D76E,1D770-1D788,1D78A-1D7A8,1D7AA-1D7C2,"
    "1D7C4-1D7CB,1D7CE-1D7FF,1DA00-1DA36,1DA3B-1DA6C,1DA75,1DA84,1DA9B-1DA9F,1DAA1-1DAAF,"
    "1DF00-1DF1E,1E000-1E006,1E008-1E018,1E01B-1E021,1E023-1E024,1E026-1E02A,1E100-1E12C,"
    "1E130-1E13D,1E140-1E149,1E14E,1E290-1E2AE,1E2C0-1E2F9,1E7E0-1E7E6,1E7E8-1E7EB,"
    "1E7ED-1E7EE,1E7F0-1E7FE,1E800-1E8C4,1E8C7-1E8D6,1E900-1E94B,1E950-1E959,1EC71-1ECAB,"
    "1ECAD-1ECAF,1ECB1-1ECB4,1ED01-1ED2D,1ED2F-1ED3D,1EE00-1EE03,1EE05-1EE1F,1EE21-1EE22,"
    "1EE24,1EE27,1EE29-1EE32,1EE34-1EE37,1EE39,1EE3B,1EE42,1EE47,1EE49,1EE4B,1EE4D-1EE4F,"
    "1EE51-1EE52,1EE54,1EE57,1EE59,1EE5B,1EE5D,1EE5F,1EE61-1EE62,1EE64,1EE67-1EE6A,"
    "1EE6C-1EE72,1EE74-1EE77,1EE79-1EE7C,1EE7E,1EE80-1EE89,1EE8B-1EE9B,1EEA1-1EEA3,"
    "1EEA5-1EEA9,1EEAB-1EEBB,1F100-1F10C,1FBF0-1FBF9,20000-2A6DF,2A700-2B738,2B740-2B81D,"
    "2B820-2CEA1,2CEB0-2EBE0,2F800-2FA1D,30000-3134A,F0000-FFFFD,100000-10FFFD"
)
# Every assigned code point from U+0080 on outside those categories (surrogates aside,
# which text cannot hold), from the same tables and checked by the same test.
_SEPARATOR_DATA = (
    "80-A9,AB-B1,B4,B6-B8,BB,BF,D7,F7,2C2-2C5,2D2-2DF,2E5-2EB,2ED,2EF-2FF,375,37E,384-385,"
    "387,3F6,482,55A-55F,589-58A,58D-58F,5BE,5C0,5C3,5C6,5F3-5F4,600-60F,61B-61F,66A-66D,"
    "6D4,6DD-6DE,6E9,6FD-6FE,700-70D,70F,7F6-7F9,7FE-7FF,830-83E,85E,888,890-891,8E2,"
    "964-965,970,9F2-9F3,9FA-9FB,9FD,A76,AF0-AF1,B70,BF3-BFA,C77,C7F,C84,D4F,D79,DF4,E3F,"
    "E4F,E5A-E5B,F01-F17,F1A-F1F,F34,F36,F38,F3A-F3D,F85,FBE-FC5,FC7-FCC,FCE-FDA,104A-104F,"
    "109E-109F,10FB,1360-1368,1390-1399,1400,166D-166E,1680,169B-169C,16EB-16ED,1735-1736,"
    "17D4-17D6,17D8-17DB,1800-180A,180E,1940,1944-1945,19DE-19FF,1A1E-1A1F,1AA0-1AA6,"
    "1AA8-1AAD,1B5A-1B6A,1B74-1B7E,1BFC-1BFF,1C3B-1C3F,1C7E-1C7F,1CC0-1CC7,1CD3,1FBD,"
    "1FBF-1FC1,1FCD-1FCF,1FDD-1FDF,1FED-1FEF,1FFD-1FFE,2000-2064,2066-206F,207A-207E,"
    "208A-208E,20A0-20C0,20E3,2100-2101,2103-2106,2108-2109,2114,2116-2118,211E-2123,2125,"
    "2127,2129,212E,213A-213B,2140-2144,214A-214D,214F,218A-218B,2190-2426,2440-244A,"
    "249C-24E9,2500-2775,2794-2B73,2B76-2B95,2B97-2BFF,2CE5-2CEA,2CF9-2CFC,2CFE-2CFF,2D70,"
    "2E00-2E2E,2E30-2E5D,2E80-2E99,2E9B-2EF3,2F00-2FD5,2FF0-2FFB,3000-3004,3008-3020,3030,"
    "3036-3037,303D-303F,309B-309C,30A0,30FB,3190-3191,3196-319F,31C0-31E3,3200-321E,"
    "322A-3247,3250,3260-327F,328A-32B0,32C0-33FF,4DC0-4DFF,A490-A4C6,A4FE-A4FF,A60D-A60F,"
    "A673,A67E,A6F2-A6F7,A700-A716,A720-A721,A789-A78A,A828-A82B,A836-A839,A874-A877,"
    "A8CE-A8CF,A8F8-A8FA,A8FC,A92E-A92F,A95F,A9C1-A9CD,A9DE-A9DF,AA5C-AA5F,AA77-AA79,"
    "AADE-AADF,AAF0-AAF1,AB5B,AB6A-AB6B,ABEB,FB29,FBB2-FBC2,FD3E-FD4F,FDCF,FDFC-FE19,"
    "FE30-FE52,FE54-FE66,FE68-FE6B,FEFF,FF01-FF0F,FF1A-FF20,FF3B-FF40,FF5B-FF65,FFE0-FFE6,"
    "FFE8-FFEE,FFF9-FFFD,10100-10102,10137-1013F,10179-10189,1018C-1018E,10190-1019C,101A0,"
    "101D0-101FC,1039F,103D0,1056F,10857,10877-10878,1091F,1093F,10A50-10A58,10A7F,10AC8,"
    "10AF0-10AF6,10B39-10B3F,10B99-10B9C,10EAD,10F55-10F59,10F86-10F89,11047-1104D,"
    "110BB-110C1,110CD,11140-11143,11174-11175,111C5-111C8,111CD,111DB,111DD-111DF,"
    "11238-1123D,112A9,1144B-1144F,1145A-1145B,1145D,114C6,115C1-115D7,11641-11643,"
    "11660-1166C,116B9,1173C-1173F,1183B,11944-11946,119E2,11A3F-11A46,11A9A-11A9C,"
    "11A9E-11AA2,11C41-11C45,11C70-11C71,11EF7-11EF8,11FD5-11FF1,11FFF,12470-12474,"
    "12FF1-12FF2,13430-13438,16A6E-16A6F,16AF5,16B37-16B3F,16B44-16B45,16E97-16E9A,16FE2,"
    "1BC9C,1BC9F-1BCA3,1CF50-1CFC3,1D000-1D0F5,1D100-1D126,1D129-1D164,1D16A-1D16C,"
    "1D173-1D17A,1D183-1D184,1D18C-1D1A9,1D1AE-1D1EA,1D200-1D241,1D245,1D300-1D356,1D6C1,"
    "1D6DB,1D6FB,1D715,1D735,1D74F,1D76F,1D789,1D7A9,1D7C3,1D800-1D9FF,1DA37-1DA3A,"
    "1DA6D-1DA74,1DA76-1DA83,1DA85-1DA8B,1E14F,1E2FF,1E95E-1E95F,1ECAC,1ECB0,1ED2E,"
    "1EEF0-1EEF1,1F000-1F02B,1F030-1F093,1F0A0-1F0AE,1F0B1-1F0BF,1F0C1-1F0CF,1F0D1-1F0F5,"
    "1F10D-1F1AD,1F1E6-1F202,1F210-1F23B,1F240-1F248,1F250-1F251,1F260-1F265,1F300-1F6D7,"
    "1F6DD-1F6EC,1F6F0-1F6FC,1F700-1F773,1F780-1F7D8,1F7E0-1F7EB,1F7F0,1F800-1F80B,"
    "1F810-1F847,1F850-1F859,1F860-1F887,1F890-1F8AD,1F8B0-1F8B1,1F900-1FA53,1FA60-1FA6D,"
    "1FA70-1FA74,1FA78-1FA7C,1FA80-1FA86,1FA90-1FAAC,1FAB0-1FABA,1FAC0-1FAC5,1FAD0-1FAD9,"
    "1FAE0-1FAE7,1FAF0-1FAF6,1FB00-1FB92,1FB94-1FBCA,E0001,E0020-E007F,E0100-E01EF"
)


def _ranges(data: str) -> tuple[tuple[int, int], ...]:
    return tuple(
        (int(low, 16), int((high or low), 16))
        for low, _, high in (part.partition("-") for part in data.split(","))
    )


WORD_RANGES = _ranges(_WORD_DATA)
SEPARATOR_RANGES = _ranges(_SEPARATOR_DATA)

_FTS_TRIGGERS = (
    "CREATE TRIGGER resources_fts_ai AFTER INSERT ON resources BEGIN "
    "INSERT INTO resources_fts(rowid, title, body) VALUES (new.rowid, new.title, new.body); "
    "END",
    "CREATE TRIGGER resources_fts_ad AFTER DELETE ON resources BEGIN "
    "INSERT INTO resources_fts(resources_fts, rowid, title, body) "
    "VALUES ('delete', old.rowid, old.title, old.body); "
    "END",
    "CREATE TRIGGER resources_fts_au AFTER UPDATE OF title, body ON resources BEGIN "
    "INSERT INTO resources_fts(resources_fts, rowid, title, body) "
    "VALUES ('delete', old.rowid, old.title, old.body); "
    "INSERT INTO resources_fts(rowid, title, body) VALUES (new.rowid, new.title, new.body); "
    "END",
)
_FTS_DROP = (
    "DROP TRIGGER IF EXISTS resources_fts_au",
    "DROP TRIGGER IF EXISTS resources_fts_ad",
    "DROP TRIGGER IF EXISTS resources_fts_ai",
    "DROP TABLE IF EXISTS resources_fts",
)


def _fts(tokenize: str) -> tuple[str, ...]:
    return (
        *_FTS_DROP,
        "CREATE VIRTUAL TABLE resources_fts USING fts5("
        f"title, body, content='resources', content_rowid='rowid', tokenize='{tokenize}')",
        *_FTS_TRIGGERS,
        "INSERT INTO resources_fts(resources_fts) VALUES ('rebuild')",
    )


# Highest code point first (see the docstring); all beyond ASCII, so none is a quote.
_SQLITE_SEPARATORS = "".join(
    chr(code) for low, high in reversed(SEPARATOR_RANGES) for code in range(high, low - 1, -1)
)
_SQLITE_TOKENIZE = (
    f"unicode61 remove_diacritics 0 categories ''L* N* M* Co'' separators ''{_SQLITE_SEPARATORS}''"
)


def _escape(code: int) -> str:
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


_WORD_CLASS = "".join(
    _escape(low) if low == high else f"{_escape(low)}-{_escape(high)}" for low, high in WORD_RANGES
)
_ASCII_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# A row's or a query's words, lowered: ASCII letters by translate() first, since lower()
# follows the database's collation and a Turkish or Azeri one lowers "I" to a dotless i; then
# lower() for every other cased script the collation knows.
LOWERED = f"lower(translate({{}}, '{_ASCII_UPPER}', '{_ASCII_UPPER.lower()}'))"
# Text whose words are separated by single spaces -> its words, each cut to its first 255
# characters (a lexeme holds at most 2047 bytes, which array_to_tsvector does not check).
# A function rather than a regular expression: cutting with one backtracks, about 0.6 ms
# for each word over 255 characters. resource-service builds its tsquery with it too.
WORDS_FUNCTION = "resources_search_words"
_CREATE_WORDS_FUNCTION = (
    f"CREATE OR REPLACE FUNCTION {WORDS_FUNCTION}(spaced text) RETURNS text[] "  # noqa: S608
    "LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE "
    "RETURN ARRAY(SELECT left(w, 255) FROM unnest(string_to_array(spaced, ' ')) AS w "
    "WHERE w <> '')"
)
_SPACED = f"regexp_replace(title || ' ' || body, '[^{_WORD_CLASS}]+', ' ', 'g')"
_SEARCH_TSV = f"array_to_tsvector({WORDS_FUNCTION}({LOWERED.format(_SPACED)}))"

_POSTGRES_UPGRADE = (
    "DROP INDEX IF EXISTS ix_resources_search",
    "ALTER TABLE resources DROP COLUMN IF EXISTS search_tsv",
    _CREATE_WORDS_FUNCTION,
    f"ALTER TABLE resources ADD COLUMN search_tsv tsvector GENERATED ALWAYS AS ({_SEARCH_TSV}) "
    "STORED",
    "CREATE INDEX ix_resources_search ON resources USING gin (search_tsv)",
)


def _require_utf8() -> None:
    """The word ranges are code points: in a SQL_ASCII database the regular expression
    sees bytes, and every non-ASCII word would fall apart. Refuse, saying what to do."""
    encoding = op.get_bind().exec_driver_sql("SHOW server_encoding").scalar()
    if encoding != "UTF8":
        raise RuntimeError(
            f"resource-service's database uses the {encoding} encoding; search needs UTF8. "
            "Create the database with ENCODING 'UTF8' (docs/SETUP.md)"
        )


def _run(sqlite: Sequence[str], postgres: Sequence[str]) -> None:
    dialect = op.get_bind().dialect.name
    statements = {"sqlite": sqlite, "postgresql": postgres}.get(dialect)
    if statements is None:
        raise NotImplementedError(f"no full-text search migration for {dialect}")
    for statement in statements:
        op.execute(statement)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _require_utf8()
    _run(_fts(_SQLITE_TOKENIZE), _POSTGRES_UPGRADE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _resources_0005().upgrade()
        op.execute(f"DROP FUNCTION IF EXISTS {WORDS_FUNCTION}(text)")
    else:
        _run(_fts("unicode61 remove_diacritics 0"), ())


def _resources_0005() -> ModuleType:
    """resources_0005's module, loaded from its file (its name starts with a digit)."""
    path = Path(__file__).with_name("0005_search_separators.py")
    spec = importlib.util.spec_from_file_location("resources_0005", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
