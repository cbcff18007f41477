//! Merchant category codes (ISO 18245) to a household budget's categories and to the expense
//! accounts (勘定科目) of Japanese small-business bookkeeping.

/// A household-budget category and the bookkeeping account of the same spending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    Food,
    DailyGoods,
    Dining,
    Transport,
    Utilities,
    Communication,
    Shopping,
    Books,
    Travel,
    Other,
    /// No merchant detail was shared (the consent lacks `MERCHANT_DETAIL`).
    Unclassified,
}

impl Category {
    /// From the MCC, or [`Category::Unclassified`] without one.
    pub fn of_mcc(mcc: Option<&str>) -> Self {
        let Some(mcc) = mcc else { return Self::Unclassified };
        match mcc {
            "5411" | "5422" | "5441" | "5451" | "5462" => Self::Food,
            "5499" | "5912" | "5977" => Self::DailyGoods,
            "5812" | "5813" | "5814" => Self::Dining,
            "4111" | "4112" | "4121" | "4131" | "4511" | "5541" | "7523" => Self::Transport,
            "4900" => Self::Utilities,
            "4812" | "4814" | "4899" => Self::Communication,
            "5311" | "5309" | "5399" | "5651" | "5732" | "5999" => Self::Shopping,
            "5942" | "5994" => Self::Books,
            "7011" | "4722" => Self::Travel,
            _ => Self::Other,
        }
    }

    /// As a household budget names it.
    pub fn kakeibo(self) -> &'static str {
        match self {
            Self::Food => "食費",
            Self::DailyGoods => "日用品",
            Self::Dining => "外食",
            Self::Transport => "交通費",
            Self::Utilities => "水道・光熱費",
            Self::Communication => "通信費",
            Self::Shopping => "買い物",
            Self::Books => "書籍・教養",
            Self::Travel => "旅行",
            Self::Other => "その他",
            Self::Unclassified => "未分類（店名の提供なし）",
        }
    }

    /// The expense account (勘定科目) a bookkeeper books it to; 仮払金 (suspense) until the
    /// spending can be classified.
    pub fn account(self) -> &'static str {
        match self {
            Self::Food | Self::DailyGoods | Self::Shopping => "消耗品費",
            Self::Dining => "会議費",
            Self::Transport | Self::Travel => "旅費交通費",
            Self::Utilities => "水道光熱費",
            Self::Communication => "通信費",
            Self::Books => "新聞図書費",
            Self::Other => "雑費",
            Self::Unclassified => "仮払金",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mccs_map_to_a_budget_category_and_an_account() {
        assert_eq!(Category::of_mcc(Some("5411")).kakeibo(), "食費");
        assert_eq!(Category::of_mcc(Some("4111")).account(), "旅費交通費");
        assert_eq!(Category::of_mcc(Some("0000")), Category::Other);
        assert_eq!(Category::of_mcc(None).account(), "仮払金");
    }
}
