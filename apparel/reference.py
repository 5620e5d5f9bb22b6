"""Reference data for the Django Apparel generator, as plain constants.

Everything here is fixed: it does not depend on the seed or the scale, so the reference extracts
(provinces, cities) are identical in every generated copy and match the real extracts described in
``DATASET.md``. The lists are written out by hand rather than loaded from a file so the generator has
no data dependency and a reviewer can read the whole reference set in one place.
"""

from __future__ import annotations

from typing import Final

# Province ids are 1..11 in exactly this order (the order of the real extract).
PROVINCE_NAMES: Final[tuple[str, ...]] = (
    "BALI",
    "DKI JAKARTA",
    "JAWA BARAT",
    "JAWA TENGAH",
    "JAWA TIMUR",
    "KALIMANTAN SELATAN",
    "KALIMANTAN TENGAH",
    "PAPUA BARAT",
    "SULAWESI UTARA",
    "SUMATERA BARAT",
    "SUMATERA UTARA",
)

#: ``(province_id, province_name)`` pairs.
PROVINCES: Final[tuple[tuple[int, str], ...]] = tuple(
    (province_id, name) for province_id, name in enumerate(PROVINCE_NAMES, start=1)
)

# Regencies (kabupaten) and cities (kota) per province, without the prefix. Papua Barat is the
# pre-2022 province: it still holds the regencies that went to Papua Barat Daya in 2022 (Sorong,
# Raja Ampat, Kota Sorong, ...), because the real extract predates that split.
_KABUPATEN: Final[dict[str, tuple[str, ...]]] = {
    "BALI": (
        "BADUNG", "BANGLI", "BULELENG", "GIANYAR", "JEMBRANA", "KARANGASEM", "KLUNGKUNG", "TABANAN",
    ),
    "DKI JAKARTA": ("KEPULAUAN SERIBU",),
    "JAWA BARAT": (
        "BANDUNG", "BANDUNG BARAT", "BEKASI", "BOGOR", "CIAMIS", "CIANJUR", "CIREBON", "GARUT",
        "INDRAMAYU", "KARAWANG", "KUNINGAN", "MAJALENGKA", "PANGANDARAN", "PURWAKARTA", "SUBANG",
        "SUKABUMI", "SUMEDANG", "TASIKMALAYA",
    ),
    "JAWA TENGAH": (
        "BANJARNEGARA", "BANYUMAS", "BATANG", "BLORA", "BOYOLALI", "BREBES", "CILACAP", "DEMAK",
        "GROBOGAN", "JEPARA", "KARANGANYAR", "KEBUMEN", "KENDAL", "KLATEN", "KUDUS", "MAGELANG", "PATI",
        "PEKALONGAN", "PEMALANG", "PURBALINGGA", "PURWOREJO", "REMBANG", "SEMARANG", "SRAGEN",
        "SUKOHARJO", "TEGAL", "TEMANGGUNG", "WONOGIRI", "WONOSOBO",
    ),
    "JAWA TIMUR": (
        "BANGKALAN", "BANYUWANGI", "BLITAR", "BOJONEGORO", "BONDOWOSO", "GRESIK", "JEMBER", "JOMBANG",
        "KEDIRI", "LAMONGAN", "LUMAJANG", "MADIUN", "MAGETAN", "MALANG", "MOJOKERTO", "NGANJUK", "NGAWI",
        "PACITAN", "PAMEKASAN", "PASURUAN", "PONOROGO", "PROBOLINGGO", "SAMPANG", "SIDOARJO",
        "SITUBONDO", "SUMENEP", "TRENGGALEK", "TUBAN", "TULUNGAGUNG",
    ),
    "KALIMANTAN SELATAN": (
        "BALANGAN", "BANJAR", "BARITO KUALA", "HULU SUNGAI SELATAN", "HULU SUNGAI TENGAH",
        "HULU SUNGAI UTARA", "KOTABARU", "TABALONG", "TANAH BUMBU", "TANAH LAUT", "TAPIN",
    ),
    "KALIMANTAN TENGAH": (
        "BARITO SELATAN", "BARITO TIMUR", "BARITO UTARA", "GUNUNG MAS", "KAPUAS", "KATINGAN",
        "KOTAWARINGIN BARAT", "KOTAWARINGIN TIMUR", "LAMANDAU", "MURUNG RAYA", "PULANG PISAU", "SERUYAN",
        "SUKAMARA",
    ),
    "PAPUA BARAT": (
        "FAKFAK", "KAIMANA", "MANOKWARI", "MANOKWARI SELATAN", "MAYBRAT", "PEGUNUNGAN ARFAK",
        "RAJA AMPAT", "SORONG", "SORONG SELATAN", "TAMBRAUW", "TELUK BINTUNI", "TELUK WONDAMA",
    ),
    "SULAWESI UTARA": (
        "BOLAANG MONGONDOW", "BOLAANG MONGONDOW SELATAN", "BOLAANG MONGONDOW TIMUR",
        "BOLAANG MONGONDOW UTARA", "KEPULAUAN SANGIHE", "KEPULAUAN SIAU TAGULANDANG BIARO",
        "KEPULAUAN TALAUD", "MINAHASA", "MINAHASA SELATAN", "MINAHASA TENGGARA", "MINAHASA UTARA",
    ),
    "SUMATERA BARAT": (
        "AGAM", "DHARMASRAYA", "KEPULAUAN MENTAWAI", "LIMA PULUH KOTA", "PADANG PARIAMAN", "PASAMAN",
        "PASAMAN BARAT", "PESISIR SELATAN", "SIJUNJUNG", "SOLOK", "SOLOK SELATAN", "TANAH DATAR",
    ),
    "SUMATERA UTARA": (
        "ASAHAN", "BATU BARA", "DAIRI", "DELI SERDANG", "HUMBANG HASUNDUTAN", "KARO", "LABUHANBATU",
        "LABUHANBATU SELATAN", "LABUHANBATU UTARA", "LANGKAT", "MANDAILING NATAL", "NIAS", "NIAS BARAT",
        "NIAS SELATAN", "NIAS UTARA", "PADANG LAWAS", "PADANG LAWAS UTARA", "PAKPAK BHARAT", "SAMOSIR",
        "SERDANG BEDAGAI", "SIMALUNGUN", "TAPANULI SELATAN", "TAPANULI TENGAH", "TAPANULI UTARA", "TOBA",
    ),
}  # fmt: skip

_KOTA: Final[dict[str, tuple[str, ...]]] = {
    "BALI": ("DENPASAR",),
    "DKI JAKARTA": ("JAKARTA BARAT", "JAKARTA PUSAT", "JAKARTA SELATAN", "JAKARTA TIMUR", "JAKARTA UTARA"),
    "JAWA BARAT": (
        "BANDUNG", "BANJAR", "BEKASI", "BOGOR", "CIMAHI", "CIREBON", "DEPOK", "SUKABUMI", "TASIKMALAYA",
    ),
    "JAWA TENGAH": ("MAGELANG", "PEKALONGAN", "SALATIGA", "SEMARANG", "SURAKARTA", "TEGAL"),
    "JAWA TIMUR": (
        "BATU", "BLITAR", "KEDIRI", "MADIUN", "MALANG", "MOJOKERTO", "PASURUAN", "PROBOLINGGO", "SURABAYA",
    ),
    "KALIMANTAN SELATAN": ("BANJARBARU", "BANJARMASIN"),
    "KALIMANTAN TENGAH": ("PALANGKA RAYA",),
    "PAPUA BARAT": ("SORONG",),
    "SULAWESI UTARA": ("BITUNG", "KOTAMOBAGU", "MANADO", "TOMOHON"),
    "SUMATERA BARAT": (
        "BUKITTINGGI", "PADANG", "PADANG PANJANG", "PARIAMAN", "PAYAKUMBUH", "SAWAHLUNTO", "SOLOK",
    ),
    "SUMATERA UTARA": (
        "BINJAI", "GUNUNGSITOLI", "MEDAN", "PADANGSIDIMPUAN", "PEMATANGSIANTAR", "SIBOLGA",
        "TANJUNGBALAI", "TEBING TINGGI",
    ),
}  # fmt: skip


def _build_cities() -> tuple[tuple[int, str, int], ...]:
    """Number the cities 1..222 in province order, regencies before cities within a province."""
    rows: list[tuple[int, str, int]] = []
    for province_id, province in PROVINCES:
        names = [f"KABUPATEN {n}" for n in _KABUPATEN[province]] + [f"KOTA {n}" for n in _KOTA[province]]
        rows.extend((len(rows) + 1, name, province_id) for name in names)
    return tuple(rows)


#: ``(city_id, city_name, province_id)`` triples, ids 1..222.
CITIES: Final[tuple[tuple[int, str, int], ...]] = _build_cities()

# --- Customers ------------------------------------------------------------------------------------

MALE_FIRST_NAMES: Final[tuple[str, ...]] = (
    "James", "John", "Robert", "Michael", "William", "David", "Richard", "Joseph", "Thomas", "Charles",
    "Christopher", "Daniel", "Matthew", "Anthony", "Mark", "Donald", "Steven", "Paul", "Andrew", "Joshua",
    "Kenneth", "Kevin", "Brian", "George", "Timothy", "Ronald", "Edward", "Jason", "Jeffrey", "Ryan",
    "Jacob", "Gary", "Nicholas", "Eric", "Jonathan", "Stephen", "Larry", "Justin", "Scott", "Brandon",
    "Benjamin", "Samuel", "Gregory", "Alexander", "Frank", "Patrick", "Raymond", "Jack", "Dennis", "Jerry",
    "Tyler", "Aaron", "Henry", "Adam", "Peter", "Nathan", "Zachary", "Walter", "Harold", "Oliver",
)  # fmt: skip

FEMALE_FIRST_NAMES: Final[tuple[str, ...]] = (
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah", "Karen",
    "Lisa", "Nancy", "Betty", "Margaret", "Sandra", "Ashley", "Kimberly", "Emily", "Donna", "Michelle",
    "Carol", "Amanda", "Dorothy", "Melissa", "Deborah", "Stephanie", "Rebecca", "Sharon", "Laura",
    "Cynthia", "Kathleen", "Amy", "Angela", "Shirley", "Anna", "Brenda", "Pamela", "Emma", "Nicole",
    "Helen", "Samantha", "Katherine", "Christine", "Debra", "Rachel", "Carolyn", "Janet", "Catherine",
    "Maria", "Heather", "Diane", "Ruth", "Julie", "Olivia", "Joyce", "Virginia", "Victoria", "Kelly",
    "Lauren", "Grace",
)  # fmt: skip

LAST_NAMES: Final[tuple[str, ...]] = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Wilson", "Anderson", "Taylor",
    "Thomas", "Moore", "Jackson", "Martin", "Lee", "Thompson", "White", "Harris", "Clark", "Lewis",
    "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Hill", "Green", "Adams",
    "Baker", "Nelson", "Carter", "Mitchell", "Roberts", "Turner", "Phillips", "Campbell", "Parker", "Evans",
    "Edwards", "Collins", "Stewart", "Morris", "Rogers", "Reed", "Cook", "Morgan", "Bell", "Murphy",
    "Bailey", "Cooper", "Richardson", "Cox", "Howard", "Ward", "Peterson", "Gray", "James", "Watson",
    "Brooks", "Kelly", "Sanders", "Price", "Bennett", "Wood", "Barnes", "Ross", "Henderson", "Coleman",
    "Jenkins", "Perry", "Powell", "Long", "Patterson", "Hughes", "Butler", "Simmons", "Foster", "Bryant",
    "Russell", "Griffin", "Hayes", "Myers", "Ford", "Hamilton", "Graham", "Sullivan", "Wallace", "Woods",
    "Cole", "West", "Jordan", "Owens", "Reynolds", "Fisher", "Ellis", "Harrison", "Gibson", "Marshall",
)  # fmt: skip

# --- Product catalogue ----------------------------------------------------------------------------

PRODUCT_TYPES: Final[tuple[str, ...]] = ("Hoodie", "Jeans", "Sweater", "T-shirt")
PRODUCT_COLORS: Final[tuple[str, ...]] = ("Black", "White", "Blue")
PRODUCT_SIZES: Final[tuple[str, ...]] = ("M", "L", "XL")
PRODUCT_CATEGORIES: Final[dict[int, str]] = {1: "Mens Fashion", 2: "Womens Fashion"}

#: The real catalogue has 43 products whatever the size of the order history.
PRODUCT_COUNT: Final[int] = 43
PRICE_MIN: Final[int] = 30_000
PRICE_MAX: Final[int] = 500_000
PRICE_STEP: Final[int] = 5_000

# Typical shelf price per type in rupiah; the generator varies around it. Keeps T-shirts cheaper
# than jeans so that revenue mixes look plausible.
BASE_PRICE: Final[dict[str, int]] = {
    "Hoodie": 250_000,
    "Jeans": 300_000,
    "Sweater": 200_000,
    "T-shirt": 90_000,
}
