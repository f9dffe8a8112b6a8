"""Language metadata: name, script, family and resource level of every language a task evaluates,
and averages of scores over groups of them."""

# code -> metadata. Resource levels: the paper calls XNLI/XQuAD languages mostly high-resource and
# names Swahili, Telugu and Bengali "very low-resource"; Urdu we also mark low (our choice).
LANGUAGES = {
    "en": dict(name="English", script="Latn", family="Indo-European", resource="high"),
    "hi": dict(name="Hindi", script="Deva", family="Indo-European", resource="high"),
    "el": dict(name="Greek", script="Grek", family="Indo-European", resource="high"),
    "vi": dict(name="Vietnamese", script="Latn", family="Austroasiatic", resource="high"),
    "sw": dict(name="Swahili", script="Latn", family="Niger-Congo", resource="low"),
    "bg": dict(name="Bulgarian", script="Cyrl", family="Indo-European", resource="high"),
    "th": dict(name="Thai", script="Thai", family="Kra-Dai", resource="high"),
    "ar": dict(name="Arabic", script="Arab", family="Afro-Asiatic", resource="high"),
    "de": dict(name="German", script="Latn", family="Indo-European", resource="high"),
    "es": dict(name="Spanish", script="Latn", family="Indo-European", resource="high"),
    "fr": dict(name="French", script="Latn", family="Indo-European", resource="high"),
    "ru": dict(name="Russian", script="Cyrl", family="Indo-European", resource="high"),
    "tr": dict(name="Turkish", script="Latn", family="Turkic", resource="high"),
    "zh": dict(name="Chinese", script="Hans", family="Sino-Tibetan", resource="high"),
    "ur": dict(name="Urdu", script="Arab", family="Indo-European", resource="low"),
    "ro": dict(name="Romanian", script="Latn", family="Indo-European", resource="high"),
    "bn": dict(name="Bengali", script="Beng", family="Indo-European", resource="low"),
    "te": dict(name="Telugu", script="Telu", family="Dravidian", resource="low"),
    "ja": dict(name="Japanese", script="Jpan", family="Japonic", resource="high"),
}
# Belebele's 23 (FLORES codes). The paper counts 4 high-resource and names Western Persian
# low-resource, so the high ones are English, Russian, Serbian and Slovak. `paper_family` is the
# paper's Table 4 grouping: sub-families for Indo-European, and Tsonga under Afro-Asiatic as the
# paper lists it (it is a Bantu, Niger-Congo language, which `family` says).
_BELEBELE_META = [  # code, name, script, family, paper_family, resource
    ("kir_Cyrl", "Kyrgyz", "Cyrl", "Turkic", "Turkic", "low"),
    ("rus_Cyrl", "Russian", "Cyrl", "Indo-European", "Balto-Slavic", "high"),
    ("srp_Cyrl", "Serbian", "Cyrl", "Indo-European", "Balto-Slavic", "high"),
    ("mya_Mymr", "Burmese", "Mymr", "Sino-Tibetan", None, "low"),
    ("shn_Mymr", "Shan", "Mymr", "Kra-Dai", None, "low"),
    ("ssw_Latn", "Swati", "Latn", "Niger-Congo", None, "low"),
    ("sun_Latn", "Sundanese", "Latn", "Austronesian", None, "low"),
    ("bam_Latn", "Bambara", "Latn", "Mande", None, "low"),
    ("snd_Arab", "Sindhi", "Arab", "Indo-European", "Indo-Aryan", "low"),
    ("arz_Arab", "Egyptian Arabic", "Arab", "Afro-Asiatic", None, "low"),
    ("pes_Arab", "Western Persian", "Arab", "Indo-European", None, "low"),
    ("amh_Ethi", "Amharic", "Ethi", "Afro-Asiatic", "Afro-Asiatic", "low"),
    ("tir_Ethi", "Tigrinya", "Ethi", "Afro-Asiatic", "Afro-Asiatic", "low"),
    ("kaz_Cyrl", "Kazakh", "Cyrl", "Turkic", "Turkic", "low"),
    ("azj_Latn", "North Azerbaijani", "Latn", "Turkic", "Turkic", "low"),
    ("kan_Knda", "Kannada", "Knda", "Dravidian", "Dravidian", "low"),
    ("mal_Mlym", "Malayalam", "Mlym", "Dravidian", "Dravidian", "low"),
    ("tam_Taml", "Tamil", "Taml", "Dravidian", "Dravidian", "low"),
    ("tso_Latn", "Tsonga", "Latn", "Niger-Congo", "Afro-Asiatic", "low"),
    ("ory_Orya", "Odia", "Orya", "Indo-European", "Indo-Aryan", "low"),
    ("sin_Sinh", "Sinhala", "Sinh", "Indo-European", "Indo-Aryan", "low"),
    ("slk_Latn", "Slovak", "Latn", "Indo-European", "Balto-Slavic", "high"),
    ("eng_Latn", "English", "Latn", "Indo-European", None, "high"),
    ("deu_Latn", "German", "Latn", "Indo-European", None, "high"),
]
LANGUAGES.update({code: dict(name=name, script=script, family=family, resource=resource,
                             **({"paper_family": paper_family} if paper_family else {}))
                  for code, name, script, family, paper_family, resource in _BELEBELE_META})


def group_averages(per_lang, by="family"):
    """Mean score per group of languages, e.g. {"Turkic": 61.2, ...}.

    Args:
        per_lang: language code -> score.
        by: a LANGUAGES key: "script", "family", "resource" or "paper_family" (languages
            without that key are left out).
    """
    unknown = [lang for lang in per_lang if lang not in LANGUAGES]
    if unknown:
        raise ValueError(f"no metadata for language(s) {', '.join(unknown)}")
    groups = {}
    for lang, value in per_lang.items():
        if by in LANGUAGES[lang]:
            groups.setdefault(LANGUAGES[lang][by], []).append(value)
    return {group: sum(values) / len(values) for group, values in groups.items()}
