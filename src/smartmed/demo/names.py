"""Chinese personal and place names for the synthetic county.

Family names follow the national frequency ranking of the Ministry of Public
Security's household-registration statistics (公安部户政管理研究中心《二〇二〇年全国姓名报告》:
王 李 张 刘 陈 杨 黄 赵 吴 周 lead; the ranks after the first twenty here are
approximate). The report publishes the ranking, not a share for every name, so
the weights are a Zipf-like curve over the rank (weight ∝ 1 / rank**0.8): an
approximation that keeps the top names at a few percent each and a long tail.

Given names are one or two characters, drawn from character pools typical of
three birth cohorts (before 1970, 1970–1999, from 2000). The pools and the share
of one-character given names are choices made for plausibility, not statistics.

Township and village names are synthetic: two characters from place-name pools
plus 镇 (town) or 村 (village); they do not name real places.
"""

from __future__ import annotations

import random
from itertools import accumulate

FAMILY_NAMES = (
    "王李张刘陈杨黄赵吴周徐孙马胡朱郭何罗高林郑梁谢宋唐许韩冯邓曹彭曾肖田董潘袁蔡蒋余"
    "于杜叶程魏苏吕丁任卢姚沈钟姜崔谭陆范汪廖石金韦贾夏付方邹熊白孟秦邱侯江尹薛闫段雷"
    "龙黎史陶贺毛郝顾龚邵万覃武钱戴严莫孔向常汤"
)
_FAMILY_CUM = list(accumulate(1.0 / (rank**0.8) for rank in range(1, len(FAMILY_NAMES) + 1)))

# (first characters, second characters) per cohort and sex.
_GIVEN: dict[tuple[str, bool], tuple[str, str]] = {
    ("old", True): ("建国志德永金福春海明文树学长宗庆振新", "国华军民平强林明生根发福忠成山荣才祥"),
    ("old", False): ("秀桂玉凤美淑素月金兰春彩翠爱", "英兰芳珍华梅琴花娥莲云芝霞凤"),
    ("mid", True): ("志建俊晓永海振宏家文明伟浩鹏立军大", "伟强磊军勇杰涛斌超波辉刚鹏峰明东华亮"),
    ("mid", False): ("丽晓海春秀静文丹美雪红婷玉", "娟敏静丽艳芳燕霞红玲琳婷颖洁莉萍"),
    ("young", True): ("子浩宇俊梓一博皓思雨泽铭轩睿", "轩涵宇辰睿泽阳浩博铭杰然恒凯航"),
    ("young", False): ("子梓欣雨思诗语可佳一紫若心梦", "涵萱怡琪妍彤悦晴琳菲婷瑶桐茜诺"),
}
ONE_CHARACTER_SHARE = 0.15

_PLACE_FIRST = "青石白龙桃梅柳松东西南北新古长安平清金凤马黄洪上下大小高杨竹"
_PLACE_SECOND = "桥山溪塘湾岭坞港口浦埠田林坪庄堰岙湖泉亭墩头河"


def family_name(rng: random.Random) -> str:
    """A family name drawn by (approximate) national frequency."""
    return rng.choices(FAMILY_NAMES, cum_weights=_FAMILY_CUM)[0]


def given_name(rng: random.Random, *, male: bool, birth_year: int) -> str:
    """A given name of one or two characters fitting the sex and birth cohort."""
    cohort = "old" if birth_year < 1970 else "mid" if birth_year < 2000 else "young"
    first, second = _GIVEN[(cohort, male)]
    if rng.random() < ONE_CHARACTER_SHARE:
        return rng.choice(second)
    a = rng.choice(first)
    b = rng.choice(second)
    while b == a:
        b = rng.choice(second)
    return a + b


def place_names(rng: random.Random, count: int, suffix: str, taken: set[str]) -> list[str]:
    """``count`` distinct synthetic place names ending in ``suffix``, not in ``taken``."""
    names: list[str] = []
    while len(names) < count:
        name = rng.choice(_PLACE_FIRST) + rng.choice(_PLACE_SECOND)
        if len(taken) >= len(_PLACE_FIRST) * len(_PLACE_SECOND) - 1:
            name += str(len(names) + 1)  # pools exhausted (a county of millions)
        if name in taken:
            continue
        taken.add(name)
        names.append(name + suffix)
    return names
